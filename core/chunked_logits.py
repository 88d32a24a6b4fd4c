"""Next-token reads through the unembedding, a slice of the vocabulary at a time: KL between two models, the
log-probability of the token that follows, and cross-entropy, never holding [positions, d_vocab] logits whole.

On a 256k vocabulary one batch of 16 × 128 positions is 2 GB of float32 logits; a log-softmax of each model and
their difference held it several times over, so the divergence stage had shrunk its batch to one row. Here the
final residual [N, d_model] is multiplied by W_U one chunk of columns at a time (CHUNK_FLOATS floats of logits
at most) and every read is an online log-sum-exp over the chunks: a running maximum m and Σ exp(z − m), rescaled
when m grows. KL(a ‖ b) = Σ p_a (z_a − z_b) − lse_a + lse_b needs one more running sum, Σ exp(z_a − m_a)(z_a − z_b).
Per-chunk work is float32 (as the logits are); the running sums are float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

CHUNK_FLOATS = 2**24  # floats of one chunk of logits (64 MiB in float32)

Chunks = Iterable[tuple[int, Tensor]]  # (first vocabulary id of the chunk, logits [N, C])


def vocab_chunk(n_positions: int, d_vocab: int, budget: int = CHUNK_FLOATS) -> int:
    """Columns of one chunk: as many as `budget` floats allow for n_positions rows, at least 1, at most d_vocab."""
    return max(1, min(d_vocab, budget // max(n_positions, 1)))


def tensor_chunks(logits: Tensor, chunk: int) -> Iterator[tuple[int, Tensor]]:
    """Chunks of logits [N, d_vocab] already computed (float32 each)."""
    for start in range(0, logits.shape[-1], chunk):
        yield start, logits[:, start:start + chunk].float()


def unembed_chunks(model: Any, residual: Tensor, chunk: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """Chunks of a HookedTransformer's logits for its normalised final residual [N, d_model]: residual @ W_U + b_U,
    through the model's logit soft cap (Gemma 2) when it has one, float32."""
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    d_vocab = W_U.shape[1]
    chunk = chunk or vocab_chunk(residual.shape[0], d_vocab)
    cap = float(getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0)
    residual = residual.to(W_U.dtype)
    for start in range(0, d_vocab, chunk):
        logits = torch.addmm(b_U[start:start + chunk], residual, W_U[:, start:start + chunk]).float()
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        yield start, logits


class _RunningLse:
    """Online log-sum-exp over chunks of [N, C]: m (float32 running max) and s = Σ exp(z − m) (float64)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.m = torch.full((n,), -torch.inf, device=device)
        self.s = torch.zeros(n, dtype=torch.float64, device=device)

    def add(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Fold a chunk in; returns exp(z − m_new) [N, C] (float32) and the factor [N] the old sums are rescaled by."""
        m_new = torch.maximum(self.m, logits.max(-1).values)
        scale = torch.exp(self.m - m_new).double().nan_to_num(0.0)  # -inf - -inf: nothing was summed yet
        weights = torch.exp(logits - m_new[:, None])
        self.s = self.s * scale + weights.sum(-1, dtype=torch.float64)
        self.m = m_new
        return weights, scale

    def value(self) -> Tensor:
        return self.m.double() + self.s.log()


def _pick(picked: Tensor, start: int, logits: Tensor, targets: Tensor | None) -> None:
    """picked[i] = logits[i, targets[i] − start] where the target falls in this chunk."""
    if targets is None:
        return
    inside = (targets >= start) & (targets < start + logits.shape[1])
    rows = inside.nonzero(as_tuple=True)[0]
    picked[rows] = logits[rows, targets[rows] - start].double()


def log_softmax_at(chunks: Chunks, targets: Tensor) -> Tensor:
    """log p(targets[i]) [N] (float64) under the logits the chunks make up; targets [N] vocabulary ids."""
    running, picked = None, None
    for start, logits in chunks:
        if running is None:
            running = _RunningLse(logits.shape[0], logits.device)
            picked = torch.full((logits.shape[0],), torch.nan, dtype=torch.float64, device=logits.device)
        running.add(logits)
        _pick(picked, start, logits, targets.to(logits.device))
    return picked - running.value()


def kl_and_logprobs(chunks_a: Chunks, chunks_b: Chunks, targets: Tensor | None = None
                    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """KL(p_a ‖ p_b) [N] in nats (float64, clamped at 0) between the next-token distributions the two chunk
    streams make up (the same chunking of the same vocabulary), and log p_a, log p_b of `targets` [N] (None
    without targets)."""
    lse_a = lse_b = weighted = picked_a = picked_b = None
    for (start, za), (start_b, zb) in zip(chunks_a, chunks_b, strict=True):
        if start != start_b or za.shape != zb.shape:
            raise ValueError("the two logit streams are chunked differently")
        zb = zb.to(za.device)
        if lse_a is None:
            n, device = za.shape[0], za.device
            lse_a, lse_b = _RunningLse(n, device), _RunningLse(n, device)
            weighted = torch.zeros(n, dtype=torch.float64, device=device)
            if targets is not None:
                targets = targets.to(device)
                picked_a, picked_b = (torch.full((n,), torch.nan, dtype=torch.float64, device=device) for _ in "ab")
        weights, scale = lse_a.add(za)
        weighted = weighted * scale + (weights * (za - zb)).sum(-1, dtype=torch.float64)
        lse_b.add(zb)
        _pick(picked_a, start, za, targets)
        _pick(picked_b, start, zb, targets)
    value_a, value_b = lse_a.value(), lse_b.value()
    kl = (weighted / lse_a.s - value_a + value_b).clamp_min(0.0)
    if targets is None:
        return kl, None, None
    return kl, picked_a - value_a, picked_b - value_b
