"""Per-feature activation statistics from one pass of a model over the corpus, for every feature at once.

For each feature: how often it fires (density, sae_vis/Neuronpedia `frac_nonzero`), its max activation, the
sum and sum of squares of its non-zero activations (so means and variances can be pooled over any set of
features, e.g. the paper's Figure 2 over medical features), a histogram over fixed log-spaced bins, how often
it fires on medical-vocabulary tokens (for the LLR), the tokens it fires on most (count and summed activation
per token id), the top contexts by activation, and a few random contexts from each log-spaced activation
interval (sae_vis's interval samples; log rather than linear intervals because activations are heavy-tailed
and equal-width intervals lump most of them into the first one).

Positions: the BOS position is left out of everything (its activation norm is an outlier tens of times the
others). A top context is one corpus row; its activation is the feature's max over the row, and its window is
`window_before` tokens before that max token and `window_after` after it. An interval sample is one firing
token, as in sae_vis: a (row, position) whose own activation lies in the interval, its window around that
token, so a dense feature's weak firings get samples of their own even when every row's max is strong. The
samples of an interval are the firings with the highest `sample_priority`, a hash of (seed, row, position,
feature): a uniform random sample without replacement that does not depend on the batching. Contexts are
kept with a running top-k per feature, so memory is O(d_sae × k × window), never O(tokens × d_sae).

Ties: among equal activations (top contexts) or priorities (samples), the earlier corpus place (row, then
position) is kept. Batches carry their corpus row indices, so the accumulator of any shard of the rows merges
(`merge`) into the accumulator of the whole pass: exactly, except float64 sums (equal to ~1e-15 relative).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.config import ActivationsConfig
from core.hook_reads import features_at_hook
from core.running_top import PLACE_LIMIT, FiredTokens, PairCounter, Reservoir, np_array, place_key

PRIORITY_MODULUS = 2**31 - 1  # a prime: the hash's arithmetic stays in int64 without overflow
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
    intervals: ContextSet  # slots = n_intervals × samples, grouped by interval; max_act is the sampled token's
    interval_index: np.ndarray  # [slots] int64: the interval of each slot
    unigram: np.ndarray  # [d_vocab] int64 token counts
    fired_tokens: FiredTokens  # per feature, the tokens it fires on most

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


def sample_priority(seed: int, row: Tensor, pos: Tensor, feature: Tensor) -> Tensor:
    """A pseudo-random int64 in [0, 2³¹ - 1) per firing, a hash of (seed, corpus row, BOS-less position, feature).

    Interval samples are the firings with the highest priority, so they depend on the seed and the corpus only,
    never on the batch size or the device. Each step keeps values below 2³¹, so products stay within int64."""
    x = torch.full_like(row, seed % PRIORITY_MODULUS)
    for part in (row, pos, feature):
        x = _mix((x * 1_000_003 + part) % PRIORITY_MODULUS)
    return x


def _mix(x: Tensor) -> Tensor:
    for multiplier in (0x2C1B3C6D, 0x297A2D39, 0x5BD1E995 % PRIORITY_MODULUS):
        x = ((x ^ (x >> 15)) * multiplier) % PRIORITY_MODULUS
    return x


class ActivationAccumulator:
    """Streams feature activations batch by batch; `result(rows)` gives the ActivationSummary."""

    def __init__(self, d_sae: int, d_vocab: int, config: ActivationsConfig, medical_token: Tensor,
                 seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.d_sae, self.config, self.device, self.seed = d_sae, config, torch.device(device), seed
        self.offsets = torch.arange(-config.window_before, config.window_after + 1, device=self.device)
        self.medical_token = medical_token.to(self.device)  # [d_vocab] bool
        self.n_tokens = self.n_medical_tokens = 0
        self.n_positions: int | None = None  # BOS-less row length, fixed by the first batch
        zeros = dict(device=self.device)
        self.n_fired = torch.zeros(d_sae, dtype=torch.long, **zeros)
        self.med_fired = torch.zeros(d_sae, dtype=torch.long, **zeros)
        self.max_act = torch.zeros(d_sae, **zeros)
        self.sum_act = torch.zeros(d_sae, dtype=torch.float64, **zeros)
        self.sum_sq_act = torch.zeros(d_sae, dtype=torch.float64, **zeros)
        self.hist_counts = torch.zeros(d_sae * (len(HIST_EDGES) - 1), dtype=torch.long, **zeros)
        self.unigram = torch.zeros(d_vocab, dtype=torch.long, **zeros)
        self.fired_pairs = PairCounter(d_vocab, self.device)
        self.hist_inner = torch.log10(torch.tensor(HIST_EDGES[1:-1], **zeros)).float()
        self.interval_inner = torch.log10(torch.tensor(INTERVAL_EDGES[1:-1], **zeros)).float()
        self.n_intervals = len(INTERVAL_EDGES) - 1
        width = len(self.offsets)
        self.top = Reservoir(config.top_contexts, d_sae, width, self.device)
        self.samples = Reservoir(config.samples_per_interval, d_sae * self.n_intervals, width, self.device)

    @torch.no_grad()
    def update(self, feature_acts: Tensor, tokens: Tensor, row_ids: Tensor) -> None:
        """feature_acts [B, T, d_sae] and tokens [B, T] without the BOS column; row_ids [B] corpus rows."""
        feature_acts, tokens = feature_acts.to(self.device).float(), tokens.to(self.device)
        if self.n_positions is None:
            self.n_positions = tokens.shape[1]
        elif tokens.shape[1] != self.n_positions:
            raise ValueError(f"batches of {tokens.shape[1]} positions after batches of {self.n_positions}")
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
        self.fired_pairs.add(f, tokens[b, t], values)
        log_values = torch.log10(values)
        n_bins = len(HIST_EDGES) - 1
        self.hist_counts += torch.bincount(f * n_bins + torch.bucketize(log_values, self.hist_inner, right=True),
                                           minlength=self.hist_counts.numel())
        row_max, argmax = feature_acts.max(dim=1)  # [B, d_sae]
        self.max_act = torch.maximum(self.max_act, row_max.max(0).values)
        rows = row_ids.to(self.device)
        window_of = self._window_of(feature_acts, tokens.shape[1])
        identity = torch.arange(self.d_sae, device=self.device)
        batch_row = torch.arange(len(rows), device=self.device).unsqueeze(1).expand_as(row_max)
        row_key = place_key(row_max.view(torch.int32).long(), rows.unsqueeze(1).expand_as(row_max))
        self.top.offer(torch.where(row_max > 0, row_key, -1), row_max, argmax,
                       rows.unsqueeze(1).expand_as(row_max), batch_row, identity, window_of)
        self._offer_interval_samples((b, t, f), values, log_values, rows, window_of)

    def merge(self, other: ActivationAccumulator) -> ActivationAccumulator:
        """Fold in an accumulator of the same pass over other rows; returns self."""
        same = (other.d_sae, other.config, other.seed, other.unigram.numel())
        if same != (self.d_sae, self.config, self.seed, self.unigram.numel()):
            raise ValueError("merging activation accumulators of different SAEs, vocabularies, configs or seeds")
        if None not in (self.n_positions, other.n_positions) and self.n_positions != other.n_positions:
            raise ValueError(f"merging rows of {other.n_positions} positions into rows of {self.n_positions}")
        self.n_positions = self.n_positions or other.n_positions
        other.to(self.device)
        self.n_tokens += other.n_tokens
        self.n_medical_tokens += other.n_medical_tokens
        for name in ("n_fired", "med_fired", "sum_act", "sum_sq_act", "hist_counts", "unigram"):
            getattr(self, name).add_(getattr(other, name))
        self.max_act = torch.maximum(self.max_act, other.max_act)
        self.fired_pairs.merge(other.fired_pairs)
        self.top.merge(other.top)
        self.samples.merge(other.samples)
        return self

    def to(self, device: str | torch.device) -> ActivationAccumulator:
        """Every tensor moved to `device` (CPU before pickling a worker's accumulator); returns self."""
        self.device = torch.device(device)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, name, value.to(self.device))
        for part in (self.fired_pairs, self.top, self.samples):
            part.to(self.device)
        return self

    def _offer_interval_samples(self, firing: tuple[Tensor, Tensor, Tensor], values: Tensor, log_values: Tensor,
                                rows: Tensor, window_of: Callable) -> None:
        """Each firing token competes, with its priority, for the slots of its (feature, interval) column; only
        the batch's `size` best per column are laid out densely ([size, d_sae × n_intervals]) for the reservoir."""
        b, t, f = firing
        nb, size = self.n_intervals, self.samples.size
        n_cols = self.d_sae * nb
        column = f * nb + torch.bucketize(log_values, self.interval_inner, right=True)
        priority = sample_priority(self.seed, rows[b], t, f)
        if len(rows) and int(rows.max() + 1) * self.n_positions > PLACE_LIMIT:
            raise ValueError(f"a corpus of over {PLACE_LIMIT:,} tokens does not fit the samples' tie-break key")
        order = priority.argsort(descending=True, stable=True)
        order = order[column[order].argsort(stable=True)]  # by column, highest priority first within one
        col_sorted = column[order]
        per_column = torch.bincount(col_sorted, minlength=n_cols)
        rank = torch.arange(len(order), device=self.device) - (per_column.cumsum(0) - per_column)[col_sorted]
        keep = rank < size
        pick, rank, col = order[keep], rank[keep], col_sorted[keep]
        key = torch.full((size, n_cols), -1, dtype=torch.long, device=self.device)
        key[rank, col] = place_key(priority[pick], rows[b[pick]] * self.n_positions + t[pick])
        value = torch.zeros((size, n_cols), device=self.device)
        value[rank, col] = values[pick]
        pos = torch.zeros((size, n_cols), dtype=torch.long, device=self.device)
        pos[rank, col] = t[pick]
        batch_row = torch.zeros((size, n_cols), dtype=torch.long, device=self.device)
        batch_row[rank, col] = b[pick]
        col_feature = torch.arange(n_cols, device=self.device) // nb
        self.samples.offer(key, value, pos, rows[batch_row], batch_row, col_feature, window_of)

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
            n_tokens=self.n_tokens, n_fired=np_array(self.n_fired), max_act=np_array(self.max_act),
            sum_act=np_array(self.sum_act), sum_sq_act=np_array(self.sum_sq_act), med_fired=np_array(self.med_fired),
            n_medical_tokens=self.n_medical_tokens,
            hist_counts=np_array(self.hist_counts).reshape(self.d_sae, len(HIST_EDGES) - 1),
            top=top, intervals=intervals, interval_index=np.repeat(np.arange(nb), size),
            unigram=np_array(self.unigram), fired_tokens=self.fired_pairs.top(self.d_sae, self.config.fired_tokens),
        )

    def _context_set(self, store: Reservoir, rows: Tensor, layout: Callable[[Tensor], Tensor]) -> ContextSet:
        empty = store.key < 0
        row = torch.where(empty, -1, store.row)
        # Reservoir positions are in BOS-less coordinates; the row's own coordinates are one further.
        positions = store.pos.unsqueeze(-1) + self.offsets  # [size, cols, W]
        body = rows[:, 1:].to(self.device)
        inside = (positions >= 0) & (positions < body.shape[1]) & ~empty.unsqueeze(-1)
        ids = body[row.clamp(min=0).unsqueeze(-1), positions.clamp(0, body.shape[1] - 1)]
        return ContextSet(
            max_act=np_array(layout(torch.where(empty, 0.0, store.value))), row=np_array(layout(row)),
            max_pos=np_array(layout(torch.where(empty, -1, store.pos + 1))),
            window_token_ids=np_array(layout(torch.where(inside, ids, -1))),
            window_acts=np_array(layout(torch.where(inside, store.window, 0.0))),
        )


def _group_by_interval(x: Tensor, d_sae: int, n_intervals: int) -> Tensor:
    """[size, d_sae * n_intervals, ...] (column = feature * n_intervals + interval) -> [d_sae, n_intervals * size, ...]."""
    size, rest = x.shape[0], x.shape[2:]
    x = x.reshape(size, d_sae, n_intervals, *rest).movedim(0, 2)  # [d_sae, n_intervals, size, ...]
    return x.reshape(d_sae, n_intervals * size, *rest)


@torch.no_grad()
def activation_pass(model: Any, sae: Any, hook_name: str, rows: Tensor, row_ids: Tensor, config: ActivationsConfig,
                    medical_token: Tensor, seed: int = 0,
                    progress: Callable[[Iterable], Iterable] = lambda it: it) -> ActivationAccumulator:
    """The accumulator of one pass of `model` over `rows` [n, T] (BOS first; corpus rows `row_ids` [n]), the SAE
    encoding the activations at `hook_name`: one shard of the corpus, or all of it."""
    device = sae.W_dec.device
    accumulator = ActivationAccumulator(sae.cfg.d_sae, model.cfg.d_vocab, config, medical_token, seed, device)
    for start in progress(range(0, rows.shape[0], config.batch_size)):
        batch = rows[start:start + config.batch_size].to(model.cfg.device)
        feature_acts = features_at_hook(model, sae, hook_name, batch)
        accumulator.update(feature_acts, batch[:, 1:], row_ids[start:start + batch.shape[0]])
    return accumulator


def collect_activations(model: Any, sae: Any, hook_name: str, rows: Tensor, config: ActivationsConfig,
                        medical_token: Tensor, seed: int = 0,
                        progress: Callable[[Iterable], Iterable] = lambda it: it) -> ActivationSummary:
    """One pass of `model` over the whole corpus `rows` [n, T] (BOS first)."""
    accumulator = activation_pass(model, sae, hook_name, rows, torch.arange(rows.shape[0]), config, medical_token,
                                  seed, progress)
    return accumulator.result(rows)
