"""How far a fine-tuned model moved from its base, seen at one hook: activations, SAE transfer, densities.

- Activation similarity (seed 002): both models at the same hook on the same tokens; per token the cosine and
  Euclidean distance of the two activation vectors, their global means, histograms and mean per position.
- SAE transfer: an SAE run on another model's activations, with the metrics of `core.sae_metrics.sae_quality`.
  Positions whose activation norm exceeds `outlier_factor` × the median norm are left out (seed 002, after
  Kissane et al.: SAEs fail on rare huge-norm activations and one of them swamps the variance); they are
  counted, kept out of the reconstruction metrics, and left unspliced (clean) in the spliced CE loss.
- Densities: the Pearson correlation of per-feature log10 densities of one SAE on two models.
The BOS position is left out of everything, as in the rest of core (its norm is an outlier of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.hook_reads import activations_at_hook, hook_losses
from core.sae_metrics import SaeQuality, ReconstructionTotals

COSINE_EDGES = np.linspace(-1.0, 1.0, 41)  # 40 bins of 0.05
# Distances scale with the hook and the model, so fixed bins must be log-spaced: 8 per decade from 1e-3 to 1e4,
# values outside go to the first / last bin (an identical model's 0 lands in the first).
DISTANCE_EDGES = 10.0 ** np.linspace(-3, 4, 57)
DEFAULT_OUTLIER_FACTOR = 10.0


@dataclass(frozen=True)
class ActivationSimilarity:
    """Two models' activations at one hook on the same tokens. Per-position arrays are [T - 1]."""

    n_tokens: int  # token positions compared (BOS excluded)
    mean_cosine: float
    mean_distance: float  # Euclidean, in the hook's units
    cosine_hist: np.ndarray  # [len(COSINE_EDGES) - 1] int64
    distance_hist: np.ndarray  # [len(DISTANCE_EDGES) - 1] int64
    position: np.ndarray  # int64: context position (BOS is 0)
    mean_cosine_by_position: np.ndarray  # float64
    mean_distance_by_position: np.ndarray  # float64
    cosine_edges: np.ndarray  # the bins' edges: COSINE_EDGES
    distance_edges: np.ndarray  # DISTANCE_EDGES


class ActivationSimilarityAccumulator:
    """Streams pairs of activation batches; `result()` gives the ActivationSimilarity."""

    def __init__(self, n_positions: int) -> None:
        self.n_positions = n_positions
        self.sum_cosine = torch.zeros(n_positions, dtype=torch.float64)
        self.sum_distance = torch.zeros(n_positions, dtype=torch.float64)
        self.count = torch.zeros(n_positions, dtype=torch.long)
        self.cosine_hist = torch.zeros(len(COSINE_EDGES) - 1, dtype=torch.long)
        self.distance_hist = torch.zeros(len(DISTANCE_EDGES) - 1, dtype=torch.long)
        self.cosine_inner = torch.tensor(COSINE_EDGES[1:-1])
        self.log_distance_inner = torch.log10(torch.tensor(DISTANCE_EDGES[1:-1]))

    @torch.no_grad()
    def update(self, acts_a: Tensor, acts_b: Tensor) -> None:
        """acts_a, acts_b: [B, P, d_in] at positions 1..P of the same rows (the BOS column already removed)."""
        if acts_a.shape != acts_b.shape or acts_a.shape[1] > self.n_positions:
            raise ValueError(f"expected two equal [B, ≤{self.n_positions}, d_in] batches, "
                             f"got {list(acts_a.shape)} and {list(acts_b.shape)}")
        a, b = acts_a.double().cpu(), acts_b.double().cpu()
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).clamp(-1, 1)  # [B, P]
        distance = (a - b).norm(dim=-1)
        width = cosine.shape[1]
        self.sum_cosine[:width] += cosine.sum(0)
        self.sum_distance[:width] += distance.sum(0)
        self.count[:width] += cosine.shape[0]
        self.cosine_hist += torch.bincount(torch.bucketize(cosine.flatten(), self.cosine_inner, right=True),
                                           minlength=self.cosine_hist.numel())
        log_distance = torch.log10(distance.flatten().clamp(min=1e-300))
        self.distance_hist += torch.bincount(torch.bucketize(log_distance, self.log_distance_inner, right=True),
                                             minlength=self.distance_hist.numel())

    def result(self) -> ActivationSimilarity:
        n = int(self.count.sum())
        seen = self.count > 0
        count = self.count.clamp(min=1).double()
        return ActivationSimilarity(
            n_tokens=n, mean_cosine=float(self.sum_cosine.sum() / max(n, 1)),
            mean_distance=float(self.sum_distance.sum() / max(n, 1)),
            cosine_hist=self.cosine_hist.numpy(), distance_hist=self.distance_hist.numpy(),
            position=np.arange(1, self.n_positions + 1)[seen.numpy()],
            mean_cosine_by_position=(self.sum_cosine / count)[seen].numpy(),
            mean_distance_by_position=(self.sum_distance / count)[seen].numpy(),
            cosine_edges=COSINE_EDGES, distance_edges=DISTANCE_EDGES,
        )


@torch.no_grad()
def activation_similarity(model_a: Any, model_b: Any, hook_name: str, rows: Tensor, batch_size: int = 16,
                          progress: Callable[[Iterable], Iterable] = lambda it: it) -> ActivationSimilarity:
    """Both models (same tokenizer) at `hook_name` over token rows [n, T] (BOS first, left out)."""
    accumulator = ActivationSimilarityAccumulator(rows.shape[1] - 1)
    for start in progress(range(0, rows.shape[0], batch_size)):
        batch = rows[start:start + batch_size]
        accumulator.update(activations_at_hook(model_a, hook_name, batch),
                           activations_at_hook(model_b, hook_name, batch))
    return accumulator.result()


@dataclass(frozen=True)
class SaeTransfer:
    """An SAE on a model's activations (its own or another's), huge-norm positions left out."""

    quality: SaeQuality  # reconstruction over kept positions; CE over all, outliers left unspliced
    n_positions: int  # token positions seen (BOS excluded)
    n_outliers: int  # positions left out: norm > outlier_threshold
    median_norm: float  # of the activations at the hook, over all positions seen
    outlier_threshold: float  # absolute norm; inf when filtering is off
    density: np.ndarray  # [d_sae] float64: share of kept positions on which each feature fired

    @property
    def outlier_fraction(self) -> float:
        return self.n_outliers / max(self.n_positions, 1)


@torch.no_grad()
def activation_norms(model: Any, hook_name: str, rows: Tensor, batch_size: int = 16) -> Tensor:
    """L2 norms [n, T - 1] of the activations at `hook_name` for token rows [n, T], BOS position left out."""
    norms = [activations_at_hook(model, hook_name, rows[start:start + batch_size]).float().norm(dim=-1).cpu()
             for start in range(0, rows.shape[0], batch_size)]
    return torch.cat(norms)


@torch.no_grad()
def sae_transfer(model: Any, sae: Any, hook_name: str, rows: Tensor,
                 outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR, batch_size: int = 16,
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> SaeTransfer:
    """`sae_quality` of `sae` on `model` at `hook_name` over rows [n, T] (BOS first), with outlier filtering.

    A first pass measures activation norms for the median; `outlier_factor=None` filters nothing, and then
    every number equals `core.sae_metrics.sae_quality`."""
    norms = activation_norms(model, hook_name, rows, batch_size)
    median = float(norms.median())
    threshold = float("inf") if outlier_factor is None else outlier_factor * median
    keep = norms <= threshold  # [n, T - 1]
    device = sae.W_dec.device
    totals = ReconstructionTotals(sae.cfg.d_sae, device)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    losses = hook_losses(model, hook_name, rows, batch_size,
                         lambda start, stop: _filtered_splice(sae, keep[start:stop], totals, fired), progress)
    quality = SaeQuality(totals.stats(), losses.clean, losses.spliced, losses.zero_ablation)
    n_kept = int(keep.sum())
    return SaeTransfer(quality=quality, n_positions=keep.numel(), n_outliers=keep.numel() - n_kept,
                       median_norm=median, outlier_threshold=threshold,
                       density=(fired.double() / max(n_kept, 1)).cpu().numpy())


def _filtered_splice(sae: Any, keep: Tensor, totals: Any, fired: Tensor) -> Callable[[Tensor, Any], Tensor]:
    """A hook that puts the SAE's reconstruction at kept positions (keep: [B, T - 1]) and measures it there."""
    def splice(act: Tensor, hook: Any) -> Tensor:
        mask = keep.to(act.device)
        x = act[:, 1:][mask].to(sae.W_dec.device)  # [n_kept, d_in]
        feature_acts = sae.encode(x)
        x_hat = sae.decode(feature_acts)
        totals.add(x, feature_acts, x_hat)
        fired.add_((feature_acts > 0).sum(0))
        out = act.clone()
        body = out[:, 1:]
        body[mask] = x_hat.to(act.device, act.dtype)
        return out
    return splice


@dataclass(frozen=True)
class DensityCorrelation:
    """Pearson correlation of log10 feature densities of one SAE's features on two models."""

    pearson: float  # over features that fired on both; NaN with fewer than 2 or no spread
    n_features: int  # features in the correlation
    n_dead_a: int  # never fired on model A (these and the next two are left out)
    n_dead_b: int
    n_dead_both: int

    @property
    def n_excluded(self) -> int:
        return self.n_dead_a + self.n_dead_b - self.n_dead_both


def log_density_correlation(density_a: np.ndarray, density_b: np.ndarray) -> DensityCorrelation:
    """density_a, density_b: [d_sae] fraction of tokens on which each feature fired, on model A and model B."""
    density_a, density_b = np.asarray(density_a, dtype=np.float64), np.asarray(density_b, dtype=np.float64)
    if density_a.shape != density_b.shape:
        raise ValueError(f"densities of the same features needed, got {density_a.shape} and {density_b.shape}")
    dead_a, dead_b = density_a <= 0, density_b <= 0
    both_fired = ~dead_a & ~dead_b
    log_a, log_b = np.log10(density_a[both_fired]), np.log10(density_b[both_fired])
    defined = both_fired.sum() >= 2 and log_a.std() > 0 and log_b.std() > 0
    return DensityCorrelation(
        pearson=float(np.corrcoef(log_a, log_b)[0, 1]) if defined else float("nan"),
        n_features=int(both_fired.sum()), n_dead_a=int(dead_a.sum()), n_dead_b=int(dead_b.sum()),
        n_dead_both=int((dead_a & dead_b).sum()),
    )
