"""The explanation prompt: a pure function of what the features database holds about one feature.

Shown to the explainer: its top contexts with the firing tokens marked `<<like this>>` and each context's
activation scaled 0-10 to the feature's max (Bills et al. 2023 show activations as integers 0-10; delphi marks
the firing tokens in the text), a few interval samples (weaker firings, so a dense feature is not described by
its peak alone), and the tokens its decoder direction promotes most (W_dec @ W_U). The reply is one line.
Changing anything here that changes the text sent is a new PROMPT_VERSION: explanations record the version.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

PROMPT_VERSION = 1
MAX_EXPLANATION_CHARS = 200  # one short line; a rambling reply is cut at a word

SYSTEM = ("You explain the features of a language model's sparse autoencoder. A feature fires on some tokens of "
          "a text. Read the examples and say in one short phrase (under 15 words) what the feature detects. "
          "Reply with the phrase only.")


@dataclass(frozen=True)
class Context:
    """A window of text: its tokens as text (" heart") and the feature's activation on each, same length."""

    tokens: tuple[str, ...]
    acts: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.acts):
            raise ValueError(f"a context needs one activation per token: {len(self.tokens)} tokens, "
                             f"{len(self.acts)} activations")

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)


@dataclass(frozen=True)
class FeatureEvidence:
    """What the prompt shows: top contexts (strongest first), interval samples, promoted tokens (W_dec @ W_U)."""

    top: tuple[Context, ...]
    samples: tuple[Context, ...] = ()
    logit_tokens: tuple[str, ...] = ()


def scale_0_10(act: float, max_act: float) -> int:
    """An activation as an integer 0-10 of the feature's max (Bills et al.); anything firing shows at least 1."""
    if act <= 0 or max_act <= 0:
        return 0
    return max(1, min(10, round(10 * act / max_act)))


def marked_text(context: Context, max_act: float) -> str:
    """The context as text with every firing token in <<...>> (a run of firing tokens shares one pair)."""
    pieces, inside = [], False
    for token, act in zip(context.tokens, context.acts):
        fires = scale_0_10(act, max_act) > 0
        if fires and not inside:
            # the marker goes after a leading space so the word stays readable: " <<heart>>"
            stripped = token.lstrip(" ")
            pieces.append(token[:len(token) - len(stripped)] + "<<" + stripped)
        elif not fires and inside:
            pieces.append(">>" + token)
        else:
            pieces.append(token)
        inside = fires
    return ("".join(pieces) + (">>" if inside else "")).replace("\n", " ")


def _firing_tokens(context: Context, max_act: float) -> str:
    pairs = [(token.strip() or repr(token), scale_0_10(act, max_act))
             for token, act in zip(context.tokens, context.acts)]
    return ", ".join(f"{token} ({value})" for token, value in pairs if value > 0)


def _example_lines(contexts: Sequence[Context], max_act: float, start: int) -> list[str]:
    lines = []
    for number, context in enumerate(contexts, start):
        lines.append(f"{number}. {marked_text(context, max_act)}")
        lines.append(f"   firing tokens (activation 0-10): {_firing_tokens(context, max_act) or 'none'}")
    return lines


def explanation_user_text(evidence: FeatureEvidence) -> str:
    """The user message: examples, weaker examples, promoted tokens, the question."""
    max_act = max((c.max_act for c in (*evidence.top, *evidence.samples)), default=0.0)
    lines = ["Texts where the feature fires most (firing tokens in <<>>):"]
    lines += _example_lines(evidence.top, max_act, 1)
    if evidence.samples:
        lines += ["", "Texts where it fires more weakly:"]
        lines += _example_lines(evidence.samples, max_act, len(evidence.top) + 1)
    if evidence.logit_tokens:
        lines += ["", "Tokens the feature makes more likely next: " + ", ".join(t.strip() or repr(t)
                                                                              for t in evidence.logit_tokens)]
    lines += ["", "What does the feature detect? One short phrase."]
    return "\n".join(lines)


def explanation_messages(evidence: FeatureEvidence) -> list[dict[str, str]]:
    """The chat messages (OpenAI format) asking for one feature's explanation."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": explanation_user_text(evidence)}]


_PREFIX = re.compile(r"^\s*(?:(?:the\s+)?(?:explanation|answer|phrase)\s*[:\-]|(?:the\s+|this\s+)?feature\s+"
                     r"(?:detects|fires on|responds to)\s*:?)\s*", re.I)


def parse_explanation(reply: str) -> str:
    """The explanation in a reply: its first non-empty line, without a leading "Explanation:", list marker,
    quotes or markers, cut at a word to MAX_EXPLANATION_CHARS. Empty when the reply says nothing."""
    line = next((line.strip() for line in reply.splitlines() if line.strip()), "")
    line = _PREFIX.sub("", re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", line))
    line = line.replace("<<", "").replace(">>", "").strip().strip("\"'`*").strip()
    if len(line) > MAX_EXPLANATION_CHARS:
        line = line[:MAX_EXPLANATION_CHARS].rsplit(" ", 1)[0]
    return line
