"""Decoder projection (a feature's logit lens): the top-k and bottom-k vocabulary tokens of `W_dec @ W_U`.

At gpt2-small scale the product is d_sae × d_vocab = 24,576 × 50,257 (4.9 GB in fp32), so it is computed in
chunks of features, keeping only each chunk's top-k and bottom-k.

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

    Runs on W_dec's device; peak extra memory ≈ chunk_size × d_vocab × 6 bytes (bf16) or × 4 (fp32).
    `precision="auto"` takes the bf16 pass on CUDA only: on a CPU without native bf16 (AVX2, like this
    project's CI machine) a bf16 matmul was measured 40x slower than fp32."""
    if precision == "auto":
        precision = "bf16" if W_dec.is_cuda else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    W_dec, W_U = W_dec.float(), W_U.float().to(W_dec.device)
    k = min(k, W_U.shape[1])
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    with torch.no_grad():
        context = _Bf16Context(W_U) if precision == "bf16" else None
        for start in range(0, W_dec.shape[0], chunk_size):
            rows = W_dec[start:start + chunk_size]
            if context is None:
                logits = rows @ W_U  # [n, d_vocab]
                top = _exact_topk(logits, k, sign=1.0)
                bottom = _exact_topk(logits, k, sign=-1.0)
            else:
                top = context.topk(rows, k, sign=1.0)
                bottom = context.topk(rows, k, sign=-1.0)
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


def _exact_topk(logits: Tensor, k: int, sign: float) -> tuple[Tensor, Tensor]:
    """Top-k of each row of sign · logits [n, V] with the tie rule; values (of sign · logits) [n, k], ids [n, k].

    Bottom-k (sign -1) uses topk(largest=False) rather than negating the whole chunk."""
    m = min(logits.shape[1], k + TIE_MARGIN)
    values, ids = logits.topk(m, dim=1, largest=sign > 0, sorted=True)
    values, ids = _order_by_value_then_id(sign * values, ids)
    if m < logits.shape[1]:
        # A tie at the k-th value that reaches the last candidate may continue outside: settle it on the full row.
        for row in torch.nonzero(values[:, k - 1] <= values[:, m - 1]).flatten().tolist():
            values[row, :k], ids[row, :k] = _row_topk_full(sign * logits[row], k)
    return values[:, :k], ids[:, :k]


def _row_topk_full(row: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The tie rule on one whole row [V] (rare path): stable sort of (-value) over ids in ascending order."""
    order = torch.sort(-row, stable=True).indices[:k]
    return row[order], order


class _Bf16Context:
    """W_U in bf16 and the column-norm bound, prepared once for all chunks."""

    def __init__(self, W_U: Tensor) -> None:
        self.W_U = W_U
        self.W_U_bf16 = W_U.bfloat16()
        self.W_U_T = W_U.T.contiguous()  # [d_vocab, d_model] for gathering candidate columns
        self.max_col_norm = W_U.norm(dim=0).max()

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
