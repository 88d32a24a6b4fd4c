"""SAE quality: L0, explained variance, MSE, dead features, and next-token loss with the SAE spliced in.

Conventions (SAELens `evals`): explained variance is 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over all tokens; CE loss
recovered is (CE_zero − CE_spliced) / (CE_zero − CE_clean), where CE_zero zero-ablates the hook. The BOS
position is never reconstructed or measured (its norm is an outlier tens of times the others); this equals
SAELens's `get_recons_loss(..., ignore_tokens=[bos])` on rows that hold BOS only at position 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from core.hook_reads import activations_at_hook, hook_loss_sums


@dataclass(frozen=True)
class ReconstructionStats:
    n_tokens: int
    l0: float  # mean number of active features per token
    explained_variance: float  # 1 - Σ‖x - x̂‖² / Σ‖x - mean(x)‖², over all tokens
    mse: float  # mean over tokens and dimensions of (x - x̂)²
    dead_fraction: float  # features that never fired on these tokens


@dataclass(frozen=True)
class SaeQuality:
    """Reconstruction and downstream loss of an SAE on token rows (CE in nats per predicted token)."""

    reconstruction: ReconstructionStats
    ce_loss_clean: float
    ce_loss_spliced: float
    ce_loss_zero_ablation: float

    @property
    def ce_loss_delta(self) -> float:
        return self.ce_loss_spliced - self.ce_loss_clean

    @property
    def ce_loss_recovered(self) -> float:
        return (self.ce_loss_zero_ablation - self.ce_loss_spliced) / (self.ce_loss_zero_ablation - self.ce_loss_clean)


class ReconstructionTotals:
    """Running sums for reconstruction stats: the variance uses Σ‖x‖² − ‖Σx‖²/n, so one pass suffices."""

    def __init__(self, d_sae: int, device: torch.device) -> None:
        self.n = 0
        self.sq_err = self.sq_norm = 0.0
        self.active = 0
        self.sum_x: Tensor | None = None
        self.fired = torch.zeros(d_sae, dtype=torch.bool, device=device)
        self.width = 0

    def add(self, x: Tensor, feature_acts: Tensor, x_hat: Tensor) -> None:
        """x, x_hat: [n, d_in]; feature_acts: [n, d_sae]."""
        x, x_hat = x.double(), x_hat.double()
        self.n += x.shape[0]
        self.width = x.shape[1]
        self.sq_err += (x - x_hat).pow(2).sum().item()
        self.sq_norm += x.pow(2).sum().item()
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.active += (feature_acts > 0).sum().item()
        self.fired |= (feature_acts > 0).any(0)

    def merge(self, other: ReconstructionTotals) -> ReconstructionTotals:
        """Fold in the totals of other tokens; returns self."""
        self.n += other.n
        self.sq_err += other.sq_err
        self.sq_norm += other.sq_norm
        self.active += other.active
        if other.sum_x is not None:
            other_sum = other.sum_x.to(self.fired.device)
            self.sum_x = other_sum if self.sum_x is None else self.sum_x + other_sum
        self.fired |= other.fired.to(self.fired.device)
        self.width = self.width or other.width
        return self

    def to(self, device: str | torch.device) -> ReconstructionTotals:
        self.fired = self.fired.to(device)
        self.sum_x = None if self.sum_x is None else self.sum_x.to(device)
        return self

    def stats(self) -> ReconstructionStats:
        total_var = self.sq_norm - self.sum_x.pow(2).sum().item() / self.n
        return ReconstructionStats(
            n_tokens=self.n, l0=self.active / self.n, explained_variance=1.0 - self.sq_err / total_var,
            mse=self.sq_err / (self.n * self.width), dead_fraction=1.0 - self.fired.float().mean().item(),
        )


@torch.no_grad()
def hook_activations(model: Any, rows: torch.Tensor, hook_name: str, batch_size: int = 32) -> torch.Tensor:
    """Activations `[n_tokens, d_in]` (float32, CPU) at `hook_name` for token rows `[n, ctx]`, BOS left out."""
    out: list[torch.Tensor] = []
    for start in range(0, rows.shape[0], batch_size):
        acts = activations_at_hook(model, hook_name, rows[start:start + batch_size])
        out.append(acts.reshape(-1, acts.shape[-1]).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstruction_stats(sae: Any, activations: torch.Tensor, batch_size: int = 4096) -> ReconstructionStats:
    """Quality of `sae` on `activations` [n_tokens, d_in] (raw: SAELens folds normalisation into the weights)."""
    device = sae.W_dec.device
    totals = ReconstructionTotals(sae.cfg.d_sae, device)
    for start in range(0, activations.shape[0], batch_size):
        x = activations[start:start + batch_size].to(device)
        feature_acts = sae.encode(x)
        totals.add(x, feature_acts, sae.decode(feature_acts))
    return totals.stats()


class QualityAccumulator:
    """The quality pass's mergeable state: reconstruction totals, summed CE losses (float64 sums and token
    counts) and every token's activation norm at the hook (kept whole: a median does not merge from parts)."""

    def __init__(self, d_sae: int, device: str | torch.device = "cpu") -> None:
        self.reconstruction = ReconstructionTotals(d_sae, torch.device(device))
        self.loss_sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
        self.n_predicted = 0
        self.norms: list[Tensor] = []  # [n_tokens] float32 per batch, CPU

    def update(self, x: Tensor, feature_acts: Tensor, x_hat: Tensor) -> None:
        """x, x_hat: [n, d_in]; feature_acts: [n, d_sae] (BOS positions left out)."""
        self.reconstruction.add(x, feature_acts, x_hat)
        self.norms.append(x.float().norm(dim=-1).cpu())

    def add_losses(self, sums: dict[str, float], n_predicted: int) -> None:
        for name, value in sums.items():
            self.loss_sums[name] += value
        self.n_predicted += n_predicted

    def merge(self, other: QualityAccumulator) -> QualityAccumulator:
        self.reconstruction.merge(other.reconstruction)
        self.add_losses(other.loss_sums, other.n_predicted)
        self.norms += other.norms
        return self

    def to(self, device: str | torch.device) -> QualityAccumulator:
        self.reconstruction.to(device)
        return self

    def result(self) -> SaeQuality:
        n = self.n_predicted
        return SaeQuality(self.reconstruction.stats(), self.loss_sums["clean"] / n, self.loss_sums["spliced"] / n,
                          self.loss_sums["zero"] / n)

    def median_norm(self) -> float:
        """The median (the lower one of an even count, as torch.median) activation norm at the hook."""
        return float(torch.cat(self.norms).median())


@torch.no_grad()
def quality_pass(model: Any, sae: Any, hook_name: str, rows: Tensor, batch_size: int = 16,
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> QualityAccumulator:
    """The accumulator of reconstruction, CE loss clean / SAE spliced / hook zero-ablated and activation norms
    over token rows [n, T] (one shard of a token set, or all of it)."""
    device = sae.W_dec.device
    accumulator = QualityAccumulator(sae.cfg.d_sae, device)

    def splice(act: Tensor, hook: Any) -> Tensor:
        x = act[:, 1:].to(device)
        feature_acts = sae.encode(x)
        x_hat = sae.decode(feature_acts)
        accumulator.update(x.reshape(-1, x.shape[-1]), feature_acts.reshape(-1, feature_acts.shape[-1]),
                           x_hat.reshape(-1, x.shape[-1]))
        out = act.clone()
        out[:, 1:] = x_hat.to(act.device, act.dtype)
        return out

    sums = hook_loss_sums(model, hook_name, rows, batch_size, lambda start, stop: splice, progress)
    accumulator.add_losses(sums, rows.shape[0] * (rows.shape[1] - 1))
    return accumulator


def sae_quality(model: Any, sae: Any, hook_name: str, rows: Tensor, batch_size: int = 16,
                progress: Callable[[Iterable], Iterable] = lambda it: it) -> SaeQuality:
    """Reconstruction stats and CE loss clean / SAE spliced / hook zero-ablated over token rows [n, T]."""
    return quality_pass(model, sae, hook_name, rows, batch_size, progress).result()
