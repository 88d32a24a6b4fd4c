"""The sentence that opens a study's "What changed" page, built from the pair's stored measurements, no LLM
(issue 22). Each clause states a measurement beside its control, and a clause whose measurement is missing is left
out rather than guessed."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LensFacts:
    site: str  # "layer 28, first 5 tokens"
    tokens: tuple[str, ...]  # its top tokens through the fine-tuned model's unembedding, strongest first
    medical: int  # medical words among its top 20
    random_medical: float  # the same count for random directions of the same norm, their mean


@dataclass(frozen=True)
class ChangeFacts:
    risers: tuple[tuple[int, str], ...]  # the base SAE's most increased features: (id, what it fires on)
    top_share: float  # medical candidates among the most increased
    live_share: float  # among every live feature
    n_top: int


@dataclass(frozen=True)
class ControlFacts:
    control: str
    emerged: int
    emerged_beyond: int
    control_emerged: int
    disappeared: int
    disappeared_beyond: int
    control_disappeared: int


def what_changed(a: str, b: str, lens: LensFacts | None = None, change: ChangeFacts | None = None,
                 control: ControlFacts | None = None) -> str:
    """One paragraph: the difference lens's tokens against random directions, the base SAE's risers and their
    medical enrichment against all live features, the fates beyond the control pair's."""
    parts = [f"From {a} to {b}:"]
    if lens is not None and lens.tokens:
        parts.append(f"the mean activation difference ({lens.site}) reads as “{', '.join(lens.tokens)}” through "
                     f"{b}'s unembedding, {lens.medical} of its top 20 tokens medical words (random directions of "
                     f"the same norm: {lens.random_medical:.1f});")
    if change is not None and change.risers:
        risers = "; ".join(f"#{feature} ({text})" if text else f"#{feature}" for feature, text in change.risers)
        enrichment = (f", {change.top_share:.0%} of the {change.n_top} most increased are medical candidates against "
                      f"{change.live_share:.0%} of all live features" if not math.isnan(change.top_share)
                      and not math.isnan(change.live_share) else "")
        parts.append(f"{a}'s SAE features that rose most on the same tokens are {risers}{enrichment};")
    if control is not None:
        parts.append(f"{control.emerged_beyond:,} of {control.emerged:,} emerged and {control.disappeared_beyond:,} of "
                     f"{control.disappeared:,} disappeared features are beyond the control pair {a} → "
                     f"{control.control} (which alone gives {control.control_emerged:,} emerged, "
                     f"{control.control_disappeared:,} disappeared).")
    elif len(parts) > 1:
        parts.append("no control is declared, so the fates are not read against SAE training noise.")
    if len(parts) == 1:
        return f"No diff measurements for {a} → {b} in this database yet."
    text = " ".join(parts)
    return text[:-1] + "." if text.endswith(";") else text
