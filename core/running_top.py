"""Running top-k per column and sparse per-(feature, token) counters: the parts of the activation pass that are
not plain sums. Both merge exactly: what they keep never depends on how the rows were batched or sharded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class FiredTokens:
    """Per feature, the token ids it fires on most, [d_sae, k]: ranked by firing count, then summed activation,
    then token id; empty slots have token_id -1 and count 0."""

    token_id: np.ndarray  # int64
    count: np.ndarray  # int64: tokens of this id on which the feature is > 0
    sum_act: np.ndarray  # float64: Σ of the feature's activation on them


class Reservoir:
    """The best `size` candidates per column by an int64 key (-1: empty slot), kept sorted by key (descending),
    with value, row, position and activation window. Keys are distinct within a column (they end in the
    candidate's corpus place), so which candidates are kept never depends on the order they were offered in."""

    def __init__(self, size: int, n_cols: int, width: int, device: torch.device) -> None:
        self.size = size
        self.key = torch.full((size, n_cols), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((size, n_cols), device=device)
        self.row = torch.full((size, n_cols), -1, dtype=torch.long, device=device)
        self.pos = torch.zeros((size, n_cols), dtype=torch.long, device=device)
        self.window = torch.zeros((size, n_cols, width), device=device)

    def offer(self, key: Tensor, value: Tensor, pos: Tensor, row: Tensor, batch_row: Tensor, col_feature: Tensor,
              window_of: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        """key, value, pos, row (corpus row), batch_row (index in this batch): [B, n_cols] candidates of this
        batch (key -1: not a candidate); col_feature [n_cols]: the feature of each column."""
        keys = torch.cat([self.key, key])
        best = keys.topk(self.size, dim=0).indices  # [size, n_cols], sorted by key
        # A batch entry with key -1 is no candidate even when topk picks it among equal -1 keys.
        from_batch = (best >= self.size) & (keys.gather(0, best) >= 0)
        changed = from_batch.any(0).nonzero().squeeze(1)
        if changed.numel() == 0:
            return
        pick, from_batch = best[:, changed], from_batch[:, changed]
        old = pick.clamp(max=self.size - 1)
        new = (pick - self.size).clamp(min=0)
        cols = changed.expand_as(pick)
        for name, batch_values in (("key", key), ("value", value), ("pos", pos), ("row", row)):
            stored = getattr(self, name)[:, changed].gather(0, old)
            fresh = batch_values[new, cols].to(stored.dtype)
            getattr(self, name)[:, changed] = torch.where(from_batch, fresh, stored)
        width = self.window.shape[2]
        window = self.window[:, changed].gather(0, old.unsqueeze(-1).expand(-1, -1, width))
        sel = from_batch.nonzero(as_tuple=True)
        entry = (new[sel], cols[sel])
        window[sel] = window_of(batch_row[entry], col_feature[cols[sel]], pos[entry])
        self.window[:, changed] = window

    def merge(self, other: Reservoir) -> None:
        """Keep the best `size` per column of both reservoirs (built over other rows)."""
        best = torch.cat([self.key, other.key]).topk(self.size, dim=0).indices  # [size, n_cols]
        for name in ("key", "value", "row", "pos"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]).gather(0, best))
        width = self.window.shape[2]
        self.window = torch.cat([self.window, other.window]).gather(0, best.unsqueeze(-1).expand(-1, -1, width))

    def to(self, device: torch.device) -> None:
        for name in ("key", "value", "row", "pos", "window"):
            setattr(self, name, getattr(self, name).to(device))


class PairCounter:
    """Firing count and summed activation per (feature, token id), held sparse: memory grows with the distinct
    pairs seen, never d_sae × d_vocab (1.2 billion at gpt2-small). Batches are merged lazily, so the running
    table is re-sorted only when the pending ones outgrow it (amortised O(n log n))."""

    def __init__(self, d_vocab: int, device: torch.device) -> None:
        self.d_vocab = d_vocab
        self.keys = torch.zeros(0, dtype=torch.long, device=device)  # feature * d_vocab + token, sorted
        self.counts = torch.zeros(0, dtype=torch.long, device=device)
        self.sums = torch.zeros(0, dtype=torch.float64, device=device)
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []
        self.pending_size = 0

    def add(self, feature: Tensor, token: Tensor, value: Tensor) -> None:
        """One batch's firings: feature, token, value [n]."""
        self.pending.append(_sum_by_key(feature * self.d_vocab + token, torch.ones_like(feature), value.double()))
        self.pending_size += len(self.pending[-1][0])
        if self.pending_size > max(len(self.keys), 1 << 20):
            self._merge()

    def _merge(self) -> None:
        parts = [(self.keys, self.counts, self.sums)] + self.pending
        self.keys, self.counts, self.sums = _sum_by_key(*(torch.cat([p[i] for p in parts]) for i in range(3)))
        self.pending, self.pending_size = [], 0

    def merge(self, other: PairCounter) -> None:
        """Fold in another counter's pairs (counts and sums of a key seen in both are added)."""
        other._merge()
        self.pending.append((other.keys.to(self.keys.device), other.counts.to(self.keys.device),
                             other.sums.to(self.keys.device)))
        self.pending_size += len(other.keys)
        if self.pending_size > max(len(self.keys), 1 << 20):
            self._merge()

    def to(self, device: torch.device) -> None:
        self._merge()
        self.keys, self.counts, self.sums = self.keys.to(device), self.counts.to(device), self.sums.to(device)

    def top(self, d_sae: int, k: int) -> FiredTokens:
        """Each feature's k tokens with most firings (ties: larger summed activation, then smaller token id)."""
        self._merge()
        keys, counts, sums = np_array(self.keys), np_array(self.counts), np_array(self.sums)
        feature, token = keys // self.d_vocab, keys % self.d_vocab
        order = np.lexsort((token, -sums, -counts, feature))
        feature = feature[order]
        starts = np.searchsorted(feature, feature, side="left")  # feature is sorted: its group's first index
        rank = np.arange(len(order)) - starts
        keep = rank < k
        out = FiredTokens(np.full((d_sae, k), -1, np.int64), np.zeros((d_sae, k), np.int64),
                          np.zeros((d_sae, k), np.float64))
        f, r, o = feature[keep], rank[keep], order[keep]
        out.token_id[f, r], out.count[f, r], out.sum_act[f, r] = token[o], counts[o], sums[o]
        return out


def _sum_by_key(keys: Tensor, counts: Tensor, sums: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct keys (sorted) with their counts and sums added up."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    total_counts = torch.zeros(len(unique), dtype=torch.long, device=keys.device).index_add_(0, inverse, counts)
    total_sums = torch.zeros(len(unique), dtype=torch.float64, device=keys.device).index_add_(0, inverse, sums)
    return unique, total_counts, total_sums


PLACE_LIMIT = 2**32  # corpus token places (row × positions + position) the tie-break key can tell apart


def place_key(rank_key: Tensor, place: Tensor) -> Tensor:
    """An int64 key ordering by `rank_key` (a non-negative int below 2³¹: a float32's bits, a priority), then
    by the earlier corpus place: the tie rule that makes the kept top-k independent of sharding and order."""
    return rank_key * PLACE_LIMIT + (PLACE_LIMIT - 1 - place)


def np_array(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
