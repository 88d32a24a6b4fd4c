"""Nearest features by decoder cosine: for each decoder row, the k most similar rows of an SAE (its own, or
another arm's when both read the same residual basis, as a fine-tune does).

At gpt2-small scale the full similarity matrix is d_sae × d_sae = 24,576² (2.4 GB in fp32), so it is computed in
blocks of chunk × chunk rows, keeping each block's top candidates per row and ranking them once at the end.
Within one SAE the matrix is symmetric: each pair of row chunks is multiplied once and serves both (its
transpose ranks the second chunk's rows), so the own-SAE search does about half the multiply-adds of the plain
product ((c + 1) / 2c for c chunks: the diagonal blocks are multiplied whole).

Order and ties: neighbours are ranked by cosine descending, equal cosines by feature id ascending; a feature
is never its own neighbour. The result is exact: the same ids, in the same order, as sorting each row of the full
product, up to fp32 rounding of a dot product (a row whose tie runs past the kept candidates is re-ranked on its
whole row). A decoder row of norm zero has cosine 0 with every row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

TIE_MARGIN = 8  # candidates kept beyond k, so that ties at the k-th place can be ordered by id
CHUNK = 4096  # rows per block (64 MB in fp32): fewer, larger blocks measured faster than 2048 on 2 loaded cores


@dataclass(frozen=True)
class Neighbours:
    """Per query row, nearest first: `ids` [n, k] int64 (rows of the searched SAE), `cosine` [n, k] float32."""

    ids: np.ndarray
    cosine: np.ndarray


def unit_rows(W: Tensor) -> Tensor:
    """W [n, d] as fp32 rows of norm 1 (a zero row stays zero, so its cosine with anything is 0)."""
    W = W.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def decoder_neighbours(W_dec: Tensor, W_other: Tensor | None = None, k: int = 10,
                       chunk_size: int = CHUNK) -> Neighbours:
    """The k nearest rows by cosine. W_dec [d_sae, d_in]; W_other [d_sae_other, d_in] or None for W_dec itself
    (then a row is not its own neighbour). Runs on W_dec's device. Peak extra memory ≈ the unit-norm copies of
    the inputs (d_sae × d_in × 4 bytes each: 75 MB at gpt2-small) + two chunk_size² fp32 blocks (128 MB at 4096)
    + each key chunk's candidates (d_sae × N / chunk_size × (k + TIE_MARGIN) × 12 bytes: 32 MB)."""
    own = W_other is None
    queries = unit_rows(W_dec)
    keys = queries if own else unit_rows(W_other).to(queries.device)
    k = min(k, keys.shape[0] - (1 if own else 0))
    if k <= 0:
        return Neighbours(np.zeros((queries.shape[0], 0), np.int64), np.zeros((queries.shape[0], 0), np.float32))
    with torch.no_grad():
        values, ids = _search(queries, keys, own, k, chunk_size)
    return Neighbours(ids.cpu().numpy().astype(np.int64), values.cpu().numpy().astype(np.float32))


class _Candidates:
    """Each block's best m = k + TIE_MARGIN (cosine, id) per row, one slot per key chunk, ranked once at the end
    (a running merge after every block costs more than the block's own top-m on 2 shared cores)."""

    def __init__(self, n: int, m: int, n_slots: int, device: torch.device) -> None:
        self.values = torch.full((n, n_slots, m), -torch.inf, device=device)
        self.ids = torch.full((n, n_slots, m), -1, dtype=torch.int64, device=device)
        self.m = m

    def add(self, rows: slice, slot: int, block: Tensor, first_id: int) -> None:
        """The best of block [len(rows), width] (cosines of columns first_id..) into `slot` of `rows`."""
        m = min(self.m, block.shape[1])
        values, cols = block.topk(m, dim=1, sorted=False)
        self.values[rows, slot, :m], self.ids[rows, slot, :m] = values, cols + first_id

    def finish(self, k: int, full_row) -> tuple[Tensor, Tensor]:
        """Top k by the tie rule; rows whose tie at the k-th place may run past the candidates are re-ranked
        on `full_row(i)` [N] (the whole row of cosines, -inf at excluded ids)."""
        values, where = self.values.flatten(1).topk(self.m, dim=1, sorted=False)
        values, ids = _order_by_value_then_id(values, self.ids.flatten(1).gather(1, where))
        # A value outside the candidates is ≤ the last candidate: equal to the k-th, it might belong before it.
        for row in torch.nonzero(values[:, k - 1] <= values[:, -1]).flatten().tolist():
            cosines = full_row(row)
            order = torch.sort(-cosines, stable=True).indices[:k]  # ties by id ascending
            values[row, :k], ids[row, :k] = cosines[order], order
        return values[:, :k], ids[:, :k]


def _order_by_value_then_id(values: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by value descending, equal values by id ascending. values, ids: [n, m]."""
    by_id = ids.argsort(dim=1)
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    by_value = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, by_value), ids.gather(1, by_value)


def _search(queries: Tensor, keys: Tensor, own: bool, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Top k (values, ids) of each row of queries [n, d] @ keys.T [d, N], block by block (chunk × chunk).
    own: keys is queries; block (i, j), j ≥ i, is multiplied once and ranks chunk i's rows against chunk j and
    (transposed) chunk j's rows against chunk i; a row against itself is excluded."""
    n, N = queries.shape[0], keys.shape[0]
    key_starts = range(0, N, chunk)
    found = _Candidates(n, min(k + TIE_MARGIN, N - 1 if own else N), len(key_starts), queries.device)
    for i in range(0, n, chunk):
        a = slice(i, min(i + chunk, n))
        for j in key_starts[i // chunk:] if own else key_starts:
            b = slice(j, min(j + chunk, N))
            block = queries[a] @ keys[b].T  # [|a|, |b|] cosines
            if own and i == j:
                block.fill_diagonal_(-torch.inf)
            found.add(a, j // chunk, block, j)
            if own and i != j:
                found.add(b, i // chunk, block.T.contiguous(), i)  # a contiguous copy: topk over it is 2x faster

    def full_row(row: int) -> Tensor:
        cosines = keys @ queries[row]
        if own:
            cosines[row] = -torch.inf
        return cosines

    return found.finish(k, full_row)
