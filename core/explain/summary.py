"""The LLM summary of one pair on the What changed page (issue 22): the chat prompt, a pure function of the facts
the page shows, and the parsing of the feature ids the reply cites.

The facts: the difference lens's top tokens at each site (medical words marked) beside random directions of the
same norm; the base SAE's most increased and decreased features with what they fire on, q and the control pair's
change; the emerged features beyond the control; the fate counts beside the control's; the most divergent text
rows. The model is asked to cite features as `base#123` / `finetuned#45` (the ids exactly as shown) and to say when
a claim is within the control. Changing anything here that changes the text sent is a new PROMPT_VERSION.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from core.change_summary import ControlFacts

PROMPT_VERSION = 1
MAX_SUMMARY_CHARS = 3000  # a few sentences; a runaway reply is cut at a sentence

SYSTEM = ("You summarise how fine-tuning changed a language model, from measurements made with sparse autoencoder "
          "(SAE) features. Use only the measurements given. Cite every feature you mention by its id exactly as "
          "written (like base#12 or finetuned#40), never a feature that is not listed. A control pair measures what "
          "SAE training alone changes: when a difference is no larger than the control's, say that it is within the "
          "control. Reply with 3 to 6 plain sentences.")

# an arm name (config: letters, digits, "_" and "-", not starting with a digit), "#", the feature id; a bare "#12"
# is caught too, so the page can flag it as a citation that names no arm
CITATION = re.compile(r"(?<![\w#-])((?:[A-Za-z_][\w-]*)?)#(\d+)(?![\w#])")


@dataclass(frozen=True)
class LensSite:
    site: str  # "blocks.3.hook_resid_pre (layer 3), first 5 tokens after BOS"
    tokens: tuple[tuple[str, bool], ...]  # top tokens through b's unembedding, strongest first: (token, is_medical)
    medical: int  # medical words among its top 20
    random_medical: float  # the same count for random directions of the same norm (their mean)


@dataclass(frozen=True)
class FeatureFact:
    arm: str
    feature: int
    fires_on: str  # its top fired tokens (or logit-lens tokens) as one line
    change: float | None = None  # mean activation in b minus in a (the base SAE's ranking)
    q: float | None = None  # Benjamini-Hochberg q of that change, or of the fate against the control
    control_change: float | None = None  # the same feature's change on the control pair
    explanation: str | None = None


@dataclass(frozen=True)
class RowFact:
    row: int  # corpus row
    mean_kl: float  # mean KL(a || b) over its text tokens
    text: str  # a snippet around its most divergent token, which is marked <<...>>


@dataclass(frozen=True)
class SummaryFacts:
    arm_a: str
    arm_b: str
    control: str | None = None  # the control arm declared for the pair
    lens: tuple[LensSite, ...] = ()
    increased: tuple[FeatureFact, ...] = ()
    decreased: tuple[FeatureFact, ...] = ()
    emerged: tuple[FeatureFact, ...] = ()  # b's emerged features beyond the control
    counts: ControlFacts | None = None
    rows: tuple[RowFact, ...] = ()


def facts_hash(facts: SummaryFacts) -> str:
    """A short, stable hash of the facts (stored with a summary: the page says when the measurements moved on)."""
    text = json.dumps(dataclasses.asdict(facts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def within_control(fact: FeatureFact) -> bool:
    """The control pair changes the feature at least as much as the pair does."""
    return (fact.change is not None and fact.control_change is not None and not math.isnan(fact.control_change)
            and abs(fact.control_change) >= abs(fact.change))


def _number(value: float | None, spec: str) -> str:
    return "n/a" if value is None or math.isnan(value) else format(value, spec)


def _feature_line(fact: FeatureFact, control: str | None) -> str:
    parts = [f"- {fact.arm}#{fact.feature}:"]
    if fact.change is not None:
        parts.append(f"change {_number(fact.change, '+.4g')}, q {_number(fact.q, '.2g')}")
        if control is not None:
            parts.append(f"(control pair: {_number(fact.control_change, '+.4g')}"
                         + (", within the control)" if within_control(fact) else ")"))
    elif fact.q is not None:
        parts.append(f"q {_number(fact.q, '.2g')}")
    parts.append(f"fires on: {fact.fires_on or 'n/a'}")
    if fact.explanation:
        parts.append(f'explanation: "{fact.explanation}"')
    return " ".join(parts)


def _lens_lines(facts: SummaryFacts) -> list[str]:
    lines = [f"The activation difference lens: the mean of ({facts.arm_b} - {facts.arm_a}) residual activations, read "
             f"through {facts.arm_b}'s unembedding (medical words marked *):"]
    for site in facts.lens:
        tokens = ", ".join((token.strip() or repr(token)) + ("*" if medical else "") for token, medical in site.tokens)
        lines.append(f"- {site.site}: {tokens}. Medical words in its top 20: {site.medical} (random directions of the "
                     f"same norm: {site.random_medical:.1f})")
    return lines


def _counts_lines(facts: SummaryFacts) -> list[str]:
    c = facts.counts
    if c is None:
        return []
    return [f"Fates of features between the two SAEs: {c.emerged} of {facts.arm_b}'s features emerged, "
            f"{c.emerged_beyond} of them beyond the control ({facts.arm_a} -> {c.control} alone gives "
            f"{c.control_emerged} emerged); {c.disappeared} of {facts.arm_a}'s disappeared, {c.disappeared_beyond} "
            f"beyond the control (control alone: {c.control_disappeared})."]


def summary_user_text(facts: SummaryFacts) -> str:
    """The user message: each kind of measurement in its own block, then the request."""
    a, b = facts.arm_a, facts.arm_b
    control = (f"The control pair {a} -> {facts.control} differs from {a} -> {b} only by the fine-tune: what it "
               "changes, SAE training alone changes." if facts.control else
               "No control pair is declared: no difference below is checked against what SAE training alone changes; "
               "say so.")
    blocks = [[f"Model {a} was fine-tuned into model {b}. {control}"]]
    if facts.lens:
        blocks.append(_lens_lines(facts))
    for title, features in ((f"Features of {a}'s SAE whose mean activation rose most from {a} to {b} on the same "
                             "tokens (q: false discovery rate):", facts.increased),
                            (f"Features of {a}'s SAE whose mean activation fell most:", facts.decreased),
                            (f"Features of {b}'s SAE that emerged beyond the control (no partner in {a}'s SAE; q "
                             "against the control):", facts.emerged)):
        if features:
            blocks.append([title] + [_feature_line(f, facts.control) for f in features])
    blocks.append(_counts_lines(facts))
    if facts.rows:
        blocks.append(["Text where the two models' next-token predictions differ most (mean KL; the most divergent "
                       "token in <<>>):"] + [f"- row {r.row} (KL {r.mean_kl:.3g}): {r.text}" for r in facts.rows])
    blocks.append([f"What did fine-tuning teach {b}? Cite feature ids exactly as written above (like {a}#12). Say "
                   "which claims are within the control."])
    return "\n\n".join("\n".join(block) for block in blocks if block)


def summary_messages(facts: SummaryFacts) -> list[dict[str, str]]:
    """The chat messages (OpenAI format) asking for the pair's summary."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": summary_user_text(facts)}]


def parse_summary(reply: str) -> str:
    """The summary in a reply: stripped, blank lines closed up, cut at a sentence past MAX_SUMMARY_CHARS."""
    text = re.sub(r"\n\s*\n+", "\n\n", reply.strip())
    if len(text) > MAX_SUMMARY_CHARS:
        cut = text[:MAX_SUMMARY_CHARS]
        text = cut[:cut.rfind(". ") + 1] if ". " in cut else cut
    return text


class Citation(NamedTuple):
    arm: str  # "" for a bare "#12"
    feature: int
    known: bool  # the arm exists and the id is below its d_sae


def cited_features(text: str, arms: Mapping[str, int]) -> list[Citation]:
    """The feature ids `text` cites as `arm#id`, in order of first mention, each once; `arms`: arm -> d_sae.
    A citation of an arm the study has not, of an id past the arm's width, or with no arm is not `known`."""
    seen: dict[tuple[str, int], Citation] = {}
    for match in CITATION.finditer(text):
        arm, feature = match.group(1), int(match.group(2))
        if (arm, feature) not in seen:
            seen[(arm, feature)] = Citation(arm, feature, arm in arms and feature < arms[arm])
    return list(seen.values())
