"""Per-feature activation statistics from one pass of a model over the corpus, for every feature at once.

For each feature: how often it fires (density, sae_vis/Neuronpedia `frac_nonzero`), its max activation, the
sum and sum of squares of its non-zero activations (so means and variances can be pooled over any set of
features, e.g. the paper's Figure 2 over medical features), a histogram over fixed log-spaced bins, how often
it fires on medical-vocabulary tokens (for the LLR), the top contexts by activation, and a few random contexts
from each log-spaced activation interval (sae_vis's interval samples; log rather than linear intervals because
activations are heavy-tailed and equal-width intervals lump most of them into the first one).

Positions: the BOS position is left out of everything (its activation norm is an outlier tens of times the
others). A context is one corpus row; its activation is the feature's max over the row, and its window is
`window_before` tokens before that max token and `window_after` after it. Contexts are kept with a running
top-k per feature, so memory is O(d_sae × k × window), never O(tokens × d_sae).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.config import ActivationsConfig
from core.loading import stop_layer_for

HIST_EDGES = 10.0 ** np.linspace(-3, 3, 49)  # 48 bins, 8 per decade; values outside go to the first / last bin
INTERVAL_EDGES = 10.0 ** np.linspace(-2, 3, 16)  # 15 sampling intervals, 3 per decade, same clamping


@dataclass(frozen=True)
class ContextSet:
    """Contexts per feature, [d_sae, slots]: empty slots have row -1. Windows [d_sae, slots, window]."""

    max_act: np.ndarray  # float32: the feature's max activation over the context
    row: np.ndarray  # int64: corpus row
    max_pos: np.ndarray  # int64: position of the max token in the row (BOS is position 0)
    window_token_ids: np.ndarray  # int64, -1 outside the row
    window_acts: np.ndarray  # float32, 0 outside the row


@dataclass(frozen=True)
class ActivationSummary:
    """One arm's pass over the corpus. Per feature arrays are [d_sae]."""

    n_tokens: int  # tokens seen (BOS positions excluded)
    n_fired: np.ndarray  # int64: tokens on which the feature is > 0
    max_act: np.ndarray  # float32
    sum_act: np.ndarray  # float64: Σ of non-zero activations
    sum_sq_act: np.ndarray  # float64
    med_fired: np.ndarray  # int64: firings on tokens whose word is in the medical vocabulary
    n_medical_tokens: int
    hist_counts: np.ndarray  # [d_sae, len(HIST_EDGES) - 1] int64
    top: ContextSet  # slots sorted by max_act, descending
    intervals: ContextSet  # slots = n_intervals × samples, grouped by interval (ascending)
    interval_index: np.ndarray  # [slots] int64: the interval of each slot
    unigram: np.ndarray  # [d_vocab] int64 token counts

    @property
    def frac_nonzero(self) -> np.ndarray:
        return self.n_fired / max(self.n_tokens, 1)

    @property
    def mean_act(self) -> np.ndarray:
        """Mean of non-zero activations (NaN for a feature that never fired)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_fired > 0, self.sum_act / self.n_fired, np.nan)

    @property
    def var_act(self) -> np.ndarray:
        """Population variance of non-zero activations (NaN for a feature that never fired)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum_act / self.n_fired
            return np.where(self.n_fired > 0, np.maximum(self.sum_sq_act / self.n_fired - mean**2, 0.0), np.nan)


def medical_llr(summary: ActivationSummary, smoothing: float = 0.5) -> np.ndarray:
    """log(P(medical token | feature fires) / P(medical token)) per feature, natural log; NaN if never fired.

    P(medical token) is the corpus unigram share of tokens whose word is in the medical vocabulary; the
    conditional is smoothed (add `smoothing` to both outcomes) so that a feature firing once is not ±∞."""
    p_medical = max(summary.n_medical_tokens, smoothing) / max(summary.n_tokens, 1)
    p_given_fire = (summary.med_fired + smoothing) / (summary.n_fired + 2 * smoothing)
    return np.where(summary.n_fired > 0, np.log(p_given_fire / p_medical), np.nan)


class _Reservoir:
    """The best `size` candidates per column by key, with value, row, position and activation window."""

    def __init__(self, size: int, n_cols: int, width: int, device: torch.device) -> None:
        self.size = size
        self.key = torch.full((size, n_cols), -torch.inf, device=device)
        self.value = torch.zeros((size, n_cols), device=device)
        self.row = torch.full((size, n_cols), -1, dtype=torch.long, device=device)
        self.pos = torch.zeros((size, n_cols), dtype=torch.long, device=device)
        self.window = torch.zeros((size, n_cols, width), device=device)

    def offer(self, key: Tensor, value: Tensor, pos: Tensor, rows: Tensor, col_feature: Tensor,
              window_of: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        """key, value, pos: [B, n_cols] candidates of this batch (key -inf: not a candidate); rows: [B]."""
        keys = torch.cat([self.key, key])
        best = keys.topk(self.size, dim=0).indices  # [size, n_cols], sorted by key
        # A batch entry with key -inf is no candidate even when topk picks it among equal -inf keys.
        from_batch = (best >= self.size) & torch.isfinite(keys.gather(0, best))
        changed = from_batch.any(0).nonzero().squeeze(1)
        if changed.numel() == 0:
            return
        pick, from_batch = best[:, changed], from_batch[:, changed]
        old = pick.clamp(max=self.size - 1)
        new = (pick - self.size).clamp(min=0)
        cols = changed.expand_as(pick)
        for name, batch_values in (("key", key), ("value", value), ("pos", pos)):
            stored = getattr(self, name)[:, changed].gather(0, old)
            getattr(self, name)[:, changed] = torch.where(from_batch, batch_values[new, cols], stored)
        stored_rows = self.row[:, changed].gather(0, old)
        self.row[:, changed] = torch.where(from_batch, rows[new], stored_rows)
        width = self.window.shape[2]
        window = self.window[:, changed].gather(0, old.unsqueeze(-1).expand(-1, -1, width))
        sel = from_batch.nonzero(as_tuple=True)
        window[sel] = window_of(new[sel], col_feature[cols[sel]], pos[new[sel], cols[sel]])
        self.window[:, changed] = window


class ActivationAccumulator:
    """Streams feature activations batch by batch; `result(rows)` gives the ActivationSummary."""

    def __init__(self, d_sae: int, d_vocab: int, config: ActivationsConfig, medical_token: Tensor,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.d_sae, self.config, self.device = d_sae, config, torch.device(device)
        self.offsets = torch.arange(-config.window_before, config.window_after + 1, device=self.device)
        self.medical_token = medical_token.to(self.device)  # [d_vocab] bool
        self.n_tokens = self.n_medical_tokens = 0
        zeros = dict(device=self.device)
        self.n_fired = torch.zeros(d_sae, dtype=torch.long, **zeros)
        self.med_fired = torch.zeros(d_sae, dtype=torch.long, **zeros)
        self.max_act = torch.zeros(d_sae, **zeros)
        self.sum_act = torch.zeros(d_sae, dtype=torch.float64, **zeros)
        self.sum_sq_act = torch.zeros(d_sae, dtype=torch.float64, **zeros)
        self.hist_counts = torch.zeros(d_sae * (len(HIST_EDGES) - 1), dtype=torch.long, **zeros)
        self.unigram = torch.zeros(d_vocab, dtype=torch.long, **zeros)
        self.hist_inner = torch.log10(torch.tensor(HIST_EDGES[1:-1], **zeros)).float()
        self.interval_inner = torch.log10(torch.tensor(INTERVAL_EDGES[1:-1], **zeros)).float()
        self.n_intervals = len(INTERVAL_EDGES) - 1
        width = len(self.offsets)
        self.top = _Reservoir(config.top_contexts, d_sae, width, self.device)
        self.samples = _Reservoir(config.samples_per_interval, d_sae * self.n_intervals, width, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def update(self, feature_acts: Tensor, tokens: Tensor, row_ids: Tensor) -> None:
        """feature_acts [B, T, d_sae] and tokens [B, T] without the BOS column; row_ids [B] corpus rows."""
        feature_acts, tokens = feature_acts.to(self.device).float(), tokens.to(self.device)
        medical = self.medical_token[tokens]  # [B, T]
        self.n_tokens += tokens.numel()
        self.n_medical_tokens += int(medical.sum())
        self.unigram += torch.bincount(tokens.flatten(), minlength=self.unigram.numel())
        b, t, f = (feature_acts > 0).nonzero(as_tuple=True)
        values = feature_acts[b, t, f]
        self.n_fired += torch.bincount(f, minlength=self.d_sae)
        self.med_fired += torch.bincount(f, weights=medical[b, t].double(), minlength=self.d_sae).long()
        self.sum_act.index_add_(0, f, values.double())
        self.sum_sq_act.index_add_(0, f, values.double() ** 2)
        log_values = torch.log10(values)
        n_bins = len(HIST_EDGES) - 1
        self.hist_counts += torch.bincount(f * n_bins + torch.bucketize(log_values, self.hist_inner, right=True),
                                           minlength=self.hist_counts.numel())
        row_max, argmax = feature_acts.max(dim=1)  # [B, d_sae]
        self.max_act = torch.maximum(self.max_act, row_max.max(0).values)
        rows = row_ids.to(self.device)
        window_of = self._window_of(feature_acts, tokens.shape[1])
        fires = row_max > 0
        identity = torch.arange(self.d_sae, device=self.device)
        self.top.offer(torch.where(fires, row_max, -torch.inf), row_max, argmax, rows, identity, window_of)
        self._offer_interval_samples(row_max, argmax, fires, rows, window_of)

    def _offer_interval_samples(self, row_max: Tensor, argmax: Tensor, fires: Tensor, rows: Tensor,
                                window_of: Callable) -> None:
        """Each firing (row, feature) competes, with a random key, for the slots of its interval."""
        n_rows, nb = row_max.shape[0], self.n_intervals
        interval = torch.bucketize(torch.log10(row_max.clamp(min=1e-30)), self.interval_inner, right=True)
        column = torch.arange(self.d_sae, device=self.device) * nb + interval  # [B, d_sae]
        priority = torch.rand(row_max.shape, generator=self.generator, device=self.device)
        shape = (n_rows, self.d_sae * nb)
        key = torch.full(shape, -torch.inf, device=self.device)
        key.scatter_(1, column, torch.where(fires, priority, -torch.inf))
        value = torch.zeros(shape, device=self.device).scatter_(1, column, row_max)
        pos = torch.zeros(shape, dtype=torch.long, device=self.device).scatter_(1, column, argmax)
        col_feature = torch.arange(self.d_sae * nb, device=self.device) // nb
        self.samples.offer(key, value, pos, rows, col_feature, window_of)

    def _window_of(self, feature_acts: Tensor, length: int) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        def window_of(batch_index: Tensor, feature: Tensor, pos: Tensor) -> Tensor:
            positions = pos.unsqueeze(-1) + self.offsets  # [n, W]
            inside = (positions >= 0) & (positions < length)
            acts = feature_acts[batch_index.unsqueeze(-1), positions.clamp(0, length - 1), feature.unsqueeze(-1)]
            return torch.where(inside, acts, 0.0)
        return window_of

    def result(self, rows: Tensor) -> ActivationSummary:
        """The summary; `rows` [n_rows, T + 1] is the corpus (BOS column included) to read window tokens from."""
        top = self._context_set(self.top, rows, lambda x: x.transpose(0, 1))
        nb, size = self.n_intervals, self.samples.size
        intervals = self._context_set(self.samples, rows, lambda x: _group_by_interval(x, self.d_sae, nb))
        return ActivationSummary(
            n_tokens=self.n_tokens, n_fired=_np(self.n_fired), max_act=_np(self.max_act),
            sum_act=_np(self.sum_act), sum_sq_act=_np(self.sum_sq_act), med_fired=_np(self.med_fired),
            n_medical_tokens=self.n_medical_tokens,
            hist_counts=_np(self.hist_counts).reshape(self.d_sae, len(HIST_EDGES) - 1),
            top=top, intervals=intervals, interval_index=np.repeat(np.arange(nb), size),
            unigram=_np(self.unigram),
        )

    def _context_set(self, store: _Reservoir, rows: Tensor, layout: Callable[[Tensor], Tensor]) -> ContextSet:
        empty = torch.isinf(store.key)
        row = torch.where(empty, -1, store.row)
        # Reservoir positions are in BOS-less coordinates; the row's own coordinates are one further.
        positions = store.pos.unsqueeze(-1) + self.offsets  # [size, cols, W]
        body = rows[:, 1:].to(self.device)
        inside = (positions >= 0) & (positions < body.shape[1]) & ~empty.unsqueeze(-1)
        ids = body[row.clamp(min=0).unsqueeze(-1), positions.clamp(0, body.shape[1] - 1)]
        return ContextSet(
            max_act=_np(layout(torch.where(empty, 0.0, store.value))), row=_np(layout(row)),
            max_pos=_np(layout(torch.where(empty, -1, store.pos + 1))),
            window_token_ids=_np(layout(torch.where(inside, ids, -1))),
            window_acts=_np(layout(torch.where(inside, store.window, 0.0))),
        )


def _group_by_interval(x: Tensor, d_sae: int, n_intervals: int) -> Tensor:
    """[size, d_sae * n_intervals, ...] (column = feature * n_intervals + interval) -> [d_sae, n_intervals * size, ...]."""
    size, rest = x.shape[0], x.shape[2:]
    x = x.reshape(size, d_sae, n_intervals, *rest).movedim(0, 2)  # [d_sae, n_intervals, size, ...]
    return x.reshape(d_sae, n_intervals * size, *rest)


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


@torch.no_grad()
def collect_activations(model: Any, sae: Any, hook_name: str, rows: Tensor, config: ActivationsConfig,
                        medical_token: Tensor, seed: int = 0,
                        progress: Callable[[Iterable], Iterable] = lambda it: it) -> ActivationSummary:
    """One pass of `model` over `rows` [n, T] (BOS first), the SAE encoding the activations at `hook_name`."""
    device = sae.W_dec.device
    accumulator = ActivationAccumulator(sae.cfg.d_sae, model.cfg.d_vocab, config, medical_token, seed, device)
    stop = stop_layer_for(hook_name)
    for start in progress(range(0, rows.shape[0], config.batch_size)):
        batch = rows[start:start + config.batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=[hook_name], stop_at_layer=stop)
        feature_acts = sae.encode(cache[hook_name][:, 1:].to(device))
        accumulator.update(feature_acts, batch[:, 1:], torch.arange(start, start + batch.shape[0]))
    return accumulator.result(rows)
