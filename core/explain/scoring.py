"""Scoring an explanation against a feature's real activations on held-out contexts (never shown to the
explainer). Both scores come from yes/no questions to a judge, answered as a probability of "yes", so that any
backend (a local model's next-token probabilities, a server's logprobs, or its plain "Yes"/"No") can answer.

Simulation (after Bills et al. 2023): for every token of every held-out context the judge reads the text up to
that token and says whether the token fits the explanation; 10 x P(yes) is its predicted activation on the
0-10 scale, and the score is the Pearson r between predicted and real activations over all those tokens
(top-and-random: activating and non-activating contexts pooled, so a score needs both where and where not).
Detection (after delphi, Paulo et al. 2024): for every held-out context the judge says whether the text
contains what the explanation describes; it says "yes" when P(yes) beats its answer to the same question about
an empty text (contextual calibration, Zhao et al. 2021: small models lean to one answer whatever they read),
and the score is the balanced accuracy over activating vs non-activating contexts (0.5 is chance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.explain.prompt import Context

Messages = list[dict[str, str]]
Judge = Callable[[list[Messages]], list[float]]  # chat messages -> P(yes) of each, in order

JUDGE_SYSTEM = "You judge whether text matches a description of a language-model feature. Answer Yes or No."


def _quoted(text: str) -> str:
    return '"' + text.replace("\n", " ").strip() + '"'


def simulation_messages(explanation: str, context: Context, position: int) -> Messages:
    """Does the token at `position` of `context` (read left to right, as the model read it) fit the explanation?"""
    prefix = "".join(context.tokens[:position + 1])
    token = context.tokens[position].strip() or repr(context.tokens[position])
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Feature: {explanation}\nText: {_quoted(prefix)}\n"
                                        f"Does the last token, {_quoted(token)}, match the feature? Yes or No?"}]


def detection_messages(explanation: str, context: Context | None) -> Messages:
    """Does the context's text contain what the explanation describes? None asks about an empty text."""
    text = "" if context is None else "".join(context.tokens)
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Feature: {explanation}\nText: {_quoted(text)}\n"
                                        "Does the text contain something that matches the feature? Yes or No?"}]


def pearson(predicted: Sequence[float], actual: Sequence[float]) -> float:
    """Pearson r of two equally long sequences; NaN when either is constant (no correlation to speak of)."""
    x, y = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"predicted and actual differ in length: {x.shape} vs {y.shape}")
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else float("nan")


def balanced_accuracy(said_yes: Sequence[bool], activating: Sequence[bool]) -> float:
    """Mean of the hit rate on activating and the correct-rejection rate on non-activating contexts; NaN
    without both kinds."""
    said, truth = np.asarray(said_yes, dtype=bool), np.asarray(activating, dtype=bool)
    if truth.all() or not truth.any():
        return float("nan")
    return float(0.5 * (said[truth].mean() + (~said[~truth]).mean()))


@dataclass(frozen=True)
class ExplanationScores:
    simulation: float  # Pearson r, -1..1 (NaN: constant prediction or activations)
    detection: float  # balanced accuracy, 0..1 (0.5 chance)
    n_tokens: int  # tokens simulated
    n_activating: int  # held-out contexts where the feature fires
    n_non_activating: int  # held-out contexts where it does not


def simulated_activations(explanation: str, contexts: Sequence[Context], judge: Judge) -> list[float]:
    """Predicted activation 0-10 of every token of every context, in order (one judge call, batched)."""
    questions = [simulation_messages(explanation, c, i) for c in contexts for i in range(len(c.tokens))]
    return [10.0 * p for p in judge(questions)] if questions else []


def detection_answers(explanation: str, contexts: Sequence[Context], judge: Judge) -> list[bool]:
    """Per context, whether the judge says it holds the feature (P(yes) above its content-free answer)."""
    answers = judge([detection_messages(explanation, None)] + [detection_messages(explanation, c) for c in contexts])
    baseline = answers[0]
    return [p > baseline for p in answers[1:]]


def score_explanation(explanation: str, activating: Sequence[Context], non_activating: Sequence[Context],
                      judge: Judge) -> ExplanationScores:
    """Simulation and detection scores of `explanation` on held-out contexts, with their real activations."""
    contexts = [*activating, *non_activating]
    predicted = simulated_activations(explanation, contexts, judge)
    actual = [a for c in contexts for a in c.acts]
    said_yes = detection_answers(explanation, contexts, judge)
    truth = [True] * len(activating) + [False] * len(non_activating)
    return ExplanationScores(pearson(predicted, actual) if actual else float("nan"),
                             balanced_accuracy(said_yes, truth), len(actual), len(activating), len(non_activating))
