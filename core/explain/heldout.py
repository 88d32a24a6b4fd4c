"""What the explainer sees and what is held out for scoring, from a feature's stored contexts, and random
non-firing contexts read live from the corpus.

Shown: the first `top_contexts` top contexts (fewer for a rare feature: at least half of them, so some are
left to hold out) and every other interval sample (up to `samples`). Held out
(never shown): the remaining top contexts and interval samples, alternately, up to `held_out` of them: the
activating contexts; and `held_out` windows of the corpus where the feature never fires: the non-activating
ones. Stored windows are the activation stage's (BOS left out, trimmed at the row's ends), with their real
per-token activations; a non-firing window's activations are all zero by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, zip_longest
from typing import Any

import numpy as np
import torch

from core.explain.prompt import Context, FeatureEvidence
from core.hook_reads import features_at_hook


@dataclass(frozen=True)
class ExplainInputs:
    evidence: FeatureEvidence  # shown to the explainer
    activating: tuple[Context, ...]  # held out, the feature fires in each
    non_activating: tuple[Context, ...]  # held out, the feature is zero on every token


def contexts_of(frame: Any) -> list[Context]:
    """Contexts from rows with `tokens` and `acts` lists (core.database.queries.feature_contexts)."""
    return [Context(tuple(str(t) for t in tokens), tuple(float(a) for a in acts))
            for tokens, acts in zip(frame["tokens"], frame["acts"])]


def split_evidence(top: Sequence[Context], samples: Sequence[Context], logit_tokens: Sequence[str],
                   non_activating: Sequence[Context], top_contexts: int, n_samples: int,
                   held_out: int) -> ExplainInputs:
    """Shown vs held-out contexts (top strongest first, samples strongest interval first)."""
    # A rare feature has few top contexts: keep up to `held_out` of them, but show at least half.
    n_shown = min(top_contexts, max(math.ceil(len(top) / 2), len(top) - held_out))
    shown_samples, kept_samples = list(samples[0::2]), list(samples[1::2])
    rest = [c for c in chain.from_iterable(zip_longest(top[n_shown:], kept_samples + shown_samples[n_samples:]))
            if c is not None and c.max_act > 0]
    evidence = FeatureEvidence(tuple(top[:n_shown]), tuple(shown_samples[:n_samples]), tuple(logit_tokens))
    return ExplainInputs(evidence, tuple(rest[:held_out]), tuple(non_activating[:held_out]))


@dataclass(frozen=True)
class CorpusWindows:
    """Random windows of the corpus and every feature's max activation over each."""

    token_ids: list[list[int]]  # [n_windows][width]
    window_max: np.ndarray  # [n_windows, d_sae] float32

    def non_firing(self, feature: int, count: int, seed: int) -> list[int]:
        """Up to `count` windows where `feature` is zero on every token, in a seeded per-feature order."""
        order = np.random.default_rng([seed, feature]).permutation(len(self.token_ids))
        return [int(i) for i in order if self.window_max[i, feature] <= 0][:count]

    def context(self, index: int, token_text: Sequence[str]) -> Context:
        ids = self.token_ids[index]
        return Context(tuple(str(token_text[i]) for i in ids), (0.0,) * len(ids))


@torch.no_grad()
def corpus_windows(model: Any, sae: Any, hook_name: str, rows: torch.Tensor, n_windows: int, width: int,
                   seed: int, batch_size: int = 16) -> CorpusWindows:
    """`n_windows` seeded random windows of `width` tokens (BOS never inside) from distinct corpus rows [n, T]
    (with replacement when the corpus has fewer rows), with each feature's max activation in each window; the
    model reads each whole row, so activations are those of the activation stage."""
    generator = np.random.default_rng(seed)
    n_rows, length = rows.shape
    width = min(width, length - 1)
    picks = generator.choice(n_rows, n_windows, replace=n_windows > n_rows)
    starts = generator.integers(1, length - width + 1, size=n_windows)  # position 0 is BOS
    token_ids, maxima = [], []
    for begin in range(0, n_windows, batch_size):
        batch_rows = torch.as_tensor(picks[begin:begin + batch_size])
        acts = features_at_hook(model, sae, hook_name, rows[batch_rows])  # [b, T - 1, d_sae], BOS left out
        for j, row in enumerate(batch_rows.tolist()):
            start = int(starts[begin + j])
            token_ids.append(rows[row, start:start + width].tolist())
            maxima.append(acts[j, start - 1:start - 1 + width].max(dim=0).values.float().cpu().numpy())
    return CorpusWindows(token_ids, np.stack(maxima) if maxima else np.zeros((0, sae.cfg.d_sae), np.float32))
