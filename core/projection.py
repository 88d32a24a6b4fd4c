"""Decoder projection (a feature's logit lens): the top-k and bottom-k vocabulary tokens of `W_dec @ W_U`.

At gpt2-small scale the product is d_sae × d_vocab = 24,576 × 50,257 (4.9 GB in fp32), so it is computed in
chunks of features, keeping only each chunk's top-k and bottom-k.

fp32 (the CPU path): W_U is cut once into contiguous vocabulary blocks of VOCAB_BLOCK columns, and a chunk's
product is taken block by block (on an AVX2 CPU ~1.6x the GFLOP/s of one [n, 50,257]-wide matmul). Tokens at the
same column of every block form a group; an elementwise max (min) over blocks gives each group's best, a topk
over those few thousand groups picks the k + TIE_MARGIN best groups, and only their members are ranked. Any
token outside them is ≤ the last chosen group's best, which is ≤ the k-th value: when equal (a tie that may
run outside), that feature is sorted on its full row, which the chunk still holds.

Order and ties: tokens are ranked by value (descending for top, ascending for bottom), equal values by
token id ascending. The result is exact: the same tokens, in the same order, as sorting the full fp32 product.

`precision="bf16"` first ranks a chunk with a bf16 product (about twice the fp32 speed), keeps a margin of
candidates per feature, and re-scores them in fp32. A bound on the bf16 error, |Σ aᵢbᵢ − bf16| ≤ 4·2⁻⁸·‖a‖·‖b‖,
proves that no token outside the candidates can reach the top-k; a feature for which the proof fails (or
whose tie runs past the candidates) is recomputed in fp32. The answer equals the fp32 one either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

BF16_ERROR = 4 * 2.0**-8  # bf16 rounding of both inputs and the output, plus fp32 accumulation, with room
TIE_MARGIN = 8  # extra candidates fetched so that ties at the k-th place can be ordered by token id
BF16_MARGIN = 64  # extra candidates kept by the bf16 pass for exact fp32 re-scoring
VOCAB_BLOCK = 4096  # W_U columns per fp32 product: of 2048, 4096 and 8192, 4096 measured fastest (2-core AVX2)


@dataclass(frozen=True)
class ProjectionTopK:
    """Per feature: `top_*` best first, `bottom_*` most negative first; ids [d_sae, k] int64, values float32."""

    top_ids: np.ndarray
    top_values: np.ndarray
    bottom_ids: np.ndarray
    bottom_values: np.ndarray


def decoder_projection_topk(W_dec: Tensor, W_U: Tensor, k: int = 10, chunk_size: int = 1024,
                            precision: str = "auto") -> ProjectionTopK:
    """Top-k / bottom-k of `W_dec @ W_U` per feature. W_dec [d_sae, d_model], W_U [d_model, d_vocab].

    Runs on W_dec's device. Peak extra memory: fp32 ≈ W_U once more (its blocks) + chunk_size × d_vocab × 4 bytes
    (0.4 GB at gpt2-small), bf16 ≈ chunk_size × d_vocab × 6 bytes. `precision="auto"` takes the bf16 pass on
    CUDA only: on a CPU without native bf16 (AVX2, like this project's CI machine) a bf16 matmul was measured
    40x slower than fp32."""
    if precision == "auto":
        precision = "bf16" if W_dec.is_cuda else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    W_dec, W_U = W_dec.float(), W_U.float().to(W_dec.device)
    k = min(k, W_U.shape[1])
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    with torch.no_grad():
        search = _Bf16Context(W_U) if precision == "bf16" else _Fp32Blocks(W_U, VOCAB_BLOCK)
        for start in range(0, W_dec.shape[0], chunk_size):
            rows = W_dec[start:start + chunk_size]
            top, bottom = search.top_bottom(rows, k)
            parts.append((top[0], top[1], -bottom[0], bottom[1]))
    top_v, top_i, bottom_v, bottom_i = (torch.cat([p[j] for p in parts]).cpu().numpy() for j in range(4))
    return ProjectionTopK(top_i.astype(np.int64), top_v.astype(np.float32), bottom_i.astype(np.int64),
                          bottom_v.astype(np.float32))


def _order_by_value_then_id(values: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by value descending, equal values by id ascending. values, ids: [n, m]."""
    by_id = ids.argsort(dim=1)
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    by_value = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, by_value), ids.gather(1, by_value)


def _row_topk_full(row: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The tie rule on one whole row [V] (rare path): stable sort of (-value) over ids in ascending order."""
    order = torch.sort(-row, stable=True).indices[:k]
    return row[order], order


class _Fp32Blocks:
    """W_U as contiguous vocabulary blocks [n_blocks, d_model, block] (the last one zero-padded), prepared once.

    Column c of every block is a group: an elementwise max over blocks and a topk over `block` groups replace a
    topk over each whole row (measured ~3.5x cheaper at gpt2-small)."""

    def __init__(self, W_U: Tensor, block_size: int) -> None:
        self.d_vocab = W_U.shape[1]
        self.blocks = W_U.new_zeros(-(-self.d_vocab // block_size), W_U.shape[0], block_size)
        for j, block in enumerate(W_U.split(block_size, dim=1)):
            self.blocks[j, :, :block.shape[1]] = block

    def top_bottom(self, rows: Tensor, k: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Exact top-k and bottom-k (values of sign · logits, ids) of rows @ W_U, one product per block."""
        n_blocks, _, width = self.blocks.shape
        logits = rows.new_empty(n_blocks, rows.shape[0], width)  # the chunk's product, block by block
        for j in range(n_blocks):
            torch.mm(rows, self.blocks[j], out=logits[j])
        padding = logits[-1, :, self.d_vocab - (n_blocks - 1) * width:]
        padding.fill_(-torch.inf)  # padded columns never win a group maximum...
        group_max = logits.amax(dim=0)
        padding.fill_(torch.inf)  # ...nor a group minimum
        group_min = logits.amin(dim=0)
        return self._select(logits, group_max, k, 1.0), self._select(logits, group_min, k, -1.0)

    def _select(self, logits: Tensor, group_best: Tensor, k: int, sign: float) -> tuple[Tensor, Tensor]:
        """Top-k of sign · logits [n_blocks, n, block] by the tie rule, from the groups with the best group_best."""
        (n_blocks, n, width), n_groups = logits.shape, min(logits.shape[2], self.d_vocab)
        m = min(n_groups, k + TIE_MARGIN)
        best, cols = group_best.topk(m, dim=1, largest=sign > 0, sorted=True)  # [n, m]
        ids = cols + width * torch.arange(n_blocks, device=cols.device)[:, None, None]  # [n_blocks, n, m]
        values = sign * logits[:, torch.arange(n, device=cols.device)[:, None], cols]
        values, ids = values.permute(1, 0, 2).reshape(n, -1), ids.permute(1, 0, 2).reshape(n, -1)
        values = values.masked_fill(ids >= self.d_vocab, -torch.inf)  # padding columns
        values, ids = _order_by_value_then_id(values, ids)
        if m < n_groups:
            # Outside the chosen groups values are ≤ the m-th group's best ≤ the k-th: equal, a tie may run outside.
            for row in torch.nonzero(values[:, k - 1] <= sign * best[:, m - 1]).flatten().tolist():
                full_row = logits[:, row].flatten()[:self.d_vocab]  # token id = block × width + column
                values[row, :k], ids[row, :k] = _row_topk_full(sign * full_row, k)
        return values[:, :k], ids[:, :k]


class _Bf16Context:
    """W_U in bf16 and the column-norm bound, prepared once for all chunks."""

    def __init__(self, W_U: Tensor) -> None:
        self.W_U = W_U
        self.W_U_bf16 = W_U.bfloat16()
        self.W_U_T = W_U.T.contiguous()  # [d_vocab, d_model] for gathering candidate columns
        self.max_col_norm = W_U.norm(dim=0).max()

    def top_bottom(self, rows: Tensor, k: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """One sign at a time, so that only one [n, d_vocab] bf16 ranking is held at once."""
        return self.topk(rows, k, sign=1.0), self.topk(rows, k, sign=-1.0)

    def topk(self, rows: Tensor, k: int, sign: float) -> tuple[Tensor, Tensor]:
        """Exact top-k of sign · rows @ W_U, via a bf16 ranking and fp32 re-scoring of candidates."""
        approx = (rows.bfloat16() @ self.W_U_bf16).float()  # [n, V]
        if sign < 0:
            approx.neg_()
        m = min(approx.shape[1], k + BF16_MARGIN)
        cand_approx, cand_ids = approx.topk(m, dim=1, largest=True, sorted=True)
        del approx
        exact = sign * torch.einsum("nd,nmd->nm", rows, self.W_U_T[cand_ids])  # fp32 re-score [n, m]
        values, ids = _order_by_value_then_id(exact, cand_ids)
        bound = BF16_ERROR * rows.norm(dim=1) * self.max_col_norm  # [n]
        # Outside the candidates every exact value is ≤ (m-th bf16 value) + bound; the k-th must beat it.
        unsafe = values[:, k - 1] <= cand_approx[:, m - 1] + bound
        unsafe |= values[:, k - 1] <= values[:, m - 1]  # a tie that may run past the candidates
        for row in torch.nonzero(unsafe).flatten().tolist() if m < self.W_U.shape[1] else []:
            values[row, :k], ids[row, :k] = _row_topk_full(sign * (rows[row] @ self.W_U), k)
        return values[:, :k], ids[:, :k]
