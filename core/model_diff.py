"""How far a fine-tuned model moved from its base, seen at one hook: activations, SAE transfer, densities.

- Activation similarity (seed 002): both models at the same hook on the same tokens; per token the cosine and
  Euclidean distance of the two activation vectors, their global means, histograms and mean per position.
- SAE transfer: an SAE run on another model's activations, with the metrics of `core.sae_metrics.sae_quality`.
  Positions whose activation norm exceeds `outlier_factor` × the median norm are left out (seed 002, after
  Kissane et al.: SAEs fail on rare huge-norm activations and one of them swamps the variance); they are
  counted, kept out of the reconstruction metrics, and left unspliced (clean) in the spliced CE loss.
- Densities: the Pearson correlation of per-feature log10 densities of one SAE on two models.
The BOS position is left out of everything, as in the rest of core (its norm is an outlier of its own).
Every pass over tokens keeps its state in an accumulator (core.accumulator) that a shard of rows fills and that
merges with the other shards'; `collect_*` is one shard's pass. Transfer takes two: NormSample (the median
norm), then TransferAccumulator, filtered at the threshold the median over every shard sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.hook_reads import HookLosses, activations_at_hook, hook_loss_sums_each
from core.sae_metrics import ReconstructionStats, SaeQuality

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
    """Per-position cosine and distance sums and the two histograms; `result()` gives the ActivationSimilarity.

    A batch is both models' activations at positions 1..P of the same rows (BOS column removed), [B, P, d_in]
    each. Sums are kept per position within a row, not per row, so any split of the rows into shards, merged
    in any order, gives the single pass (counts and histograms exactly, float64 sums to rounding). Each batch's
    cosines and distances are computed on the activations' device in float64; the state is numpy on the CPU."""

    def __init__(self, n_positions: int) -> None:
        self.n_positions = n_positions
        self.sum_cosine = np.zeros(n_positions)
        self.sum_distance = np.zeros(n_positions)
        self.count = np.zeros(n_positions, dtype=np.int64)
        self.cosine_hist = np.zeros(len(COSINE_EDGES) - 1, dtype=np.int64)
        self.distance_hist = np.zeros(len(DISTANCE_EDGES) - 1, dtype=np.int64)

    @torch.no_grad()
    def update(self, acts_a: Tensor, acts_b: Tensor) -> None:
        """acts_a, acts_b: [B, P, d_in] at positions 1..P of the same rows (the BOS column already removed)."""
        if acts_a.shape != acts_b.shape or acts_a.shape[1] > self.n_positions:
            raise ValueError(f"expected two equal [B, ≤{self.n_positions}, d_in] batches, "
                             f"got {list(acts_a.shape)} and {list(acts_b.shape)}")
        a, b = acts_a.double(), acts_b.double().to(acts_a.device)
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12).clamp(-1, 1)  # [B, P]
        distance = (a - b).norm(dim=-1)
        width = cosine.shape[1]
        self.sum_cosine[:width] += _np(cosine.sum(0))
        self.sum_distance[:width] += _np(distance.sum(0))
        self.count[:width] += cosine.shape[0]
        cosine_inner = torch.tensor(COSINE_EDGES[1:-1], device=a.device)
        log_distance_inner = torch.log10(torch.tensor(DISTANCE_EDGES[1:-1], device=a.device))
        self.cosine_hist += _np(torch.bincount(torch.bucketize(cosine.flatten(), cosine_inner, right=True),
                                               minlength=len(self.cosine_hist)))
        log_distance = torch.log10(distance.flatten().clamp(min=1e-300))
        self.distance_hist += _np(torch.bincount(torch.bucketize(log_distance, log_distance_inner, right=True),
                                                 minlength=len(self.distance_hist)))

    def merge(self, other: ActivationSimilarityAccumulator) -> ActivationSimilarityAccumulator:
        if other.n_positions != self.n_positions:
            raise ValueError(f"cannot merge similarity over {other.n_positions} positions into {self.n_positions}")
        for name in ("sum_cosine", "sum_distance", "count", "cosine_hist", "distance_hist"):
            getattr(self, name)[...] += getattr(other, name)
        return self

    def result(self) -> ActivationSimilarity:
        n = int(self.count.sum())
        seen = self.count > 0
        count = np.maximum(self.count, 1)
        return ActivationSimilarity(
            n_tokens=n, mean_cosine=float(self.sum_cosine.sum() / max(n, 1)),
            mean_distance=float(self.sum_distance.sum() / max(n, 1)),
            cosine_hist=self.cosine_hist.copy(), distance_hist=self.distance_hist.copy(),
            position=np.arange(1, self.n_positions + 1)[seen],
            mean_cosine_by_position=(self.sum_cosine / count)[seen],
            mean_distance_by_position=(self.sum_distance / count)[seen],
            cosine_edges=COSINE_EDGES, distance_edges=DISTANCE_EDGES,
        )


@torch.no_grad()
def activation_similarity(model_a: Any, model_b: Any, hook_name: str, rows: Tensor, batch_size: int = 16,
                          progress: Callable[[Iterable], Iterable] = lambda it: it) -> ActivationSimilarity:
    """Both models (same tokenizer) at `hook_name` over token rows [n, T] (BOS first, left out)."""
    return collect_similarity(model_a, model_b, hook_name, rows, batch_size, progress).result()


@torch.no_grad()
def collect_similarity(model_a: Any, model_b: Any, hook_name: str, rows: Tensor, batch_size: int = 16,
                       progress: Callable[[Iterable], Iterable] = lambda it: it) -> ActivationSimilarityAccumulator:
    """One shard's pass: the accumulator over token rows [n, T] (any subset of the corpus, BOS first)."""
    accumulator = ActivationSimilarityAccumulator(rows.shape[1] - 1)
    for start in progress(range(0, rows.shape[0], batch_size)):
        batch = rows[start:start + batch_size]
        accumulator.update(activations_at_hook(model_a, hook_name, batch),
                           activations_at_hook(model_b, hook_name, batch))
    return accumulator


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


class NormSample:
    """Every activation norm a pass has seen, for their exact median (the scale of the outlier filter).

    A batch is the float32 norms [B, P] of one batch of rows, BOS left out. A median does not depend on the
    order of the values, so shards merge by concatenation; the price is 4 bytes a token (40 MB for 10M)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def update(self, norms: Tensor) -> None:
        self.parts.append(_np(norms.float()).ravel())

    def merge(self, other: NormSample) -> NormSample:
        self.parts += other.parts
        return self

    def result(self) -> float:
        """The lower median (torch.median's rule: the ⌊(n − 1)/2⌋-th smallest value), NaN with no values."""
        values = np.concatenate(self.parts) if self.parts else np.zeros(0, np.float32)
        if values.size == 0:
            return float("nan")
        k = (values.size - 1) // 2
        return float(np.partition(values, k)[k])


@torch.no_grad()
def collect_norms(model: Any, hook_name: str, rows: Tensor, batch_size: int = 16) -> NormSample:
    """One shard's first transfer pass: the norms at `hook_name` over token rows [n, T] (BOS first)."""
    sample = NormSample()
    for start in range(0, rows.shape[0], batch_size):
        sample.update(activations_at_hook(model, hook_name, rows[start:start + batch_size]).float().norm(dim=-1))
    return sample


class TransferAccumulator:
    """Sums for SaeTransfer: an SAE spliced in at its hook, positions above `outlier_threshold` left out.

    A batch of rows is folded in by two calls: `update(x, feature_acts, x_hat, n_positions)` from the splice
    hook, with the batch's kept positions (x, x_hat [n_kept, d_in]; feature_acts [n_kept, d_sae]) and its
    number of positions (BOS left out), then `add_losses(losses, n_predicted)` with its CE losses. Every field is
    a sum over tokens (float64, int64 counts), so shards of rows merge in any order. The threshold comes from the
    median over every shard (NormSample), so a sharded run makes its first pass over all shards first."""

    def __init__(self, d_in: int, d_sae: int, median_norm: float, outlier_threshold: float) -> None:
        self.median_norm, self.outlier_threshold = median_norm, outlier_threshold
        self.n_positions = self.n_kept = self.active = self.n_predicted = 0
        self.sq_err = self.sq_norm = 0.0  # Σ‖x − x̂‖², Σ‖x‖² over kept positions
        self.sum_x = np.zeros(d_in)
        self.fired = np.zeros(d_sae, dtype=np.int64)  # kept positions on which each feature fired
        self.loss_sums = np.zeros(3)  # CE clean, spliced, zero-ablated: nats summed over predicted tokens

    @torch.no_grad()
    def update(self, x: Tensor, feature_acts: Tensor, x_hat: Tensor, n_positions: int) -> None:
        x, x_hat = x.double(), x_hat.double()
        fired = feature_acts > 0
        self.n_positions += n_positions
        self.n_kept += x.shape[0]
        self.sq_err += (x - x_hat).pow(2).sum().item()
        self.sq_norm += x.pow(2).sum().item()
        self.sum_x += _np(x.sum(0))
        self.active += int(fired.sum())
        self.fired += _np(fired.sum(0))

    def add_losses(self, losses: HookLosses, n_predicted: int) -> None:
        """One batch's mean CE losses over its n_predicted next tokens (summed back: shards weigh by tokens)."""
        self.loss_sums += np.array([losses.clean, losses.spliced, losses.zero_ablation]) * n_predicted
        self.n_predicted += n_predicted

    def merge(self, other: TransferAccumulator) -> TransferAccumulator:
        if (other.median_norm, other.outlier_threshold) != (self.median_norm, self.outlier_threshold):
            raise ValueError("cannot merge transfers filtered at different thresholds: give every shard the median "
                             "over all shards")
        for name in ("n_positions", "n_kept", "active", "n_predicted", "sq_err", "sq_norm"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("sum_x", "fired", "loss_sums"):
            getattr(self, name)[...] += getattr(other, name)
        return self

    def result(self) -> SaeTransfer:
        n = self.n_kept
        total_var = self.sq_norm - float((self.sum_x**2).sum()) / n
        reconstruction = ReconstructionStats(
            n_tokens=n, l0=self.active / n, explained_variance=1.0 - self.sq_err / total_var,
            mse=self.sq_err / (n * len(self.sum_x)), dead_fraction=float((self.fired == 0).mean()))
        clean, spliced, zero = self.loss_sums / self.n_predicted
        return SaeTransfer(quality=SaeQuality(reconstruction, float(clean), float(spliced), float(zero)),
                           n_positions=self.n_positions, n_outliers=self.n_positions - n,
                           median_norm=self.median_norm, outlier_threshold=self.outlier_threshold,
                           density=self.fired / max(n, 1))


@torch.no_grad()
def sae_transfer(model: Any, sae: Any, hook_name: str, rows: Tensor,
                 outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR, batch_size: int = 16,
                 progress: Callable[[Iterable], Iterable] = lambda it: it) -> SaeTransfer:
    """`sae_quality` of `sae` on `model` at `hook_name` over rows [n, T] (BOS first), with outlier filtering.

    A first pass measures activation norms for the median; `outlier_factor=None` filters nothing, and then
    every number equals `core.sae_metrics.sae_quality`."""
    median = collect_norms(model, hook_name, rows, batch_size).result()
    return collect_transfer(model, sae, hook_name, rows, median, outlier_factor, batch_size, progress).result()


@torch.no_grad()
def collect_transfer(model: Any, sae: Any, hook_name: str, rows: Tensor, median_norm: float,
                     outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR, batch_size: int = 16,
                     progress: Callable[[Iterable], Iterable] = lambda it: it) -> TransferAccumulator:
    """One shard's second transfer pass over token rows [n, T] (BOS first): the SAE spliced in at positions whose
    norm is at most outlier_factor × `median_norm` (the median over every shard); None filters nothing."""
    return collect_transfers(model, {"sae": sae}, hook_name, rows, median_norm, outlier_factor, batch_size,
                             progress)["sae"]


def collect_transfers(model: Any, saes: dict[str, Any], hook_name: str, rows: Tensor, median_norm: float,
                      outlier_factor: float | None = DEFAULT_OUTLIER_FACTOR, batch_size: int = 16,
                      progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, TransferAccumulator]:
    """collect_transfer for several SAEs at one hook of one model, by name: they share each batch's clean and
    zero-ablated pass (the transfer stage's own SAE and other SAE on a model)."""
    threshold = float("inf") if outlier_factor is None else outlier_factor * median_norm
    accumulators = {name: TransferAccumulator(sae.cfg.d_in, sae.cfg.d_sae, median_norm, threshold)
                    for name, sae in saes.items()}
    # Splices named apart from "clean" and "zero", whatever the SAEs are called.
    splices = {f"spliced {name}": _filtered_splice(sae, threshold, accumulators[name]) for name, sae in saes.items()}
    sums = hook_loss_sums_each(model, hook_name, rows, batch_size, lambda start, stop: splices, progress)
    n_predicted = rows.shape[0] * (rows.shape[1] - 1)
    for name, accumulator in accumulators.items():
        accumulator.add_losses(HookLosses(sums["clean"] / n_predicted, sums[f"spliced {name}"] / n_predicted,
                                          sums["zero"] / n_predicted), n_predicted)
    return accumulators


def _filtered_splice(sae: Any, threshold: float, accumulator: TransferAccumulator) -> Callable[[Tensor, Any], Tensor]:
    """A hook that puts the SAE's reconstruction at positions whose norm is at most `threshold` (the norms pass's
    own measure: float32 L2 over d_in, BOS left out) and measures it there."""
    def splice(act: Tensor, hook: Any) -> Tensor:
        keep = act[:, 1:].float().norm(dim=-1) <= threshold  # [B, T - 1]
        x = act[:, 1:][keep].to(sae.W_dec.device)  # [n_kept, d_in]
        feature_acts = sae.encode(x)
        x_hat = sae.decode(feature_acts)
        accumulator.update(x, feature_acts, x_hat, keep.numel())
        out = act.clone()
        body = out[:, 1:]
        body[keep] = x_hat.to(act.device, act.dtype)
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


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
