"""What Neuronpedia's feature record holds that the features database does not: read from the SAE's weights and
one pass over the study's tokens (sae_vis / SAEDashboard compute the same three things for their dashboards).

- the logit histogram: every vocabulary token's logit weight `W_dec[f] @ W_U`, binned (`logits_hist_data_*`);
- the neuron alignment: the decoder direction's largest entries in the hook's basis (`neuron_alignment_*`);
- correlated features: the same SAE's features whose activations correlate most with f over the same tokens
  (`correlated_features_*`: Pearson, and the uncentred cosine that SAEDashboard writes as `_l1`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.matching import Coactivations

LOGIT_BINS = 40  # sae_vis's logits histogram
TOP_ALIGNED = 3  # rows of sae_vis's feature tables
FEATURE_CHUNK = 512  # features per W_dec @ W_U product: 512 x 49k vocabulary x 4 bytes = 100 MB


@dataclass(frozen=True)
class Histograms:
    """Per feature [d_sae, bins]: bar heights (token counts) and bar values (bin centres, logit units)."""

    heights: np.ndarray
    values: np.ndarray


def logit_histograms(W_dec: Tensor, W_U: Tensor, bins: int = LOGIT_BINS) -> Histograms:
    """Histogram of each feature's logit weights over the whole vocabulary, `bins` equal bins from its min to max.
    W_dec [d_sae, d_model], W_U [d_model, d_vocab]; heights sum to d_vocab for every feature."""
    W_dec, W_U = W_dec.detach().float(), W_U.detach().float().to(W_dec.device)
    heights, values = [], []
    for start in range(0, W_dec.shape[0], FEATURE_CHUNK):
        logits = W_dec[start:start + FEATURE_CHUNK] @ W_U  # [chunk, d_vocab]
        low, high = logits.min(dim=1).values, logits.max(dim=1).values
        width = torch.where(high > low, (high - low) / bins, torch.ones_like(high))
        index = ((logits - low[:, None]) / width[:, None]).floor().clamp(0, bins - 1).long()  # max in the last bin
        counts = torch.zeros(logits.shape[0], bins, dtype=torch.long, device=logits.device)
        counts.scatter_add_(1, index, torch.ones_like(index))
        heights.append(counts.cpu().numpy())
        centres = low[:, None] + width[:, None] * (torch.arange(bins, device=logits.device) + 0.5)
        values.append(centres.cpu().numpy())
    return Histograms(np.concatenate(heights), np.concatenate(values))


@dataclass(frozen=True)
class Ranked:
    """Per feature [d_sae, k]: indices (-1 where fewer than k exist), their values, and a second measure."""

    indices: np.ndarray
    values: np.ndarray
    second: np.ndarray


def neuron_alignment(W_dec: Tensor, k: int = TOP_ALIGNED) -> Ranked:
    """The k entries of each decoder row largest in magnitude: their indices in the hook's basis, their values,
    and each one's share of the row's L1 norm (sae_vis's feature table)."""
    W = W_dec.detach().float().cpu()
    k = min(k, W.shape[1])
    values, indices = W.abs().topk(k, dim=1)
    signed = W.gather(1, indices)
    l1 = values / W.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
    return Ranked(indices.numpy(), signed.numpy(), (l1 * signed.sign()).numpy())


def correlated_features(coactivations: Coactivations, k: int = TOP_ALIGNED, block_rows: int = 1024) -> Ranked:
    """The k features of the same SAE most correlated with each feature (itself and NaNs left out), from the sums
    of one SAE against itself (`CoactivationAccumulator(d_sae, d_sae)` fed the same activations twice): Pearson,
    then the cosine of the two activation vectors, Σab / √(Σa² Σb²)."""
    d_sae = coactivations.d_sae_a
    k = min(k, d_sae - 1)
    indices = np.full((d_sae, k), -1, dtype=np.int64)
    pearson = np.full((d_sae, k), np.nan)
    cosine = np.full((d_sae, k), np.nan)
    norms = np.sqrt(coactivations.sum_sq_b)
    for start in range(0, d_sae, block_rows):
        rows = slice(start, min(start + block_rows, d_sae))
        corr = coactivations.correlation(rows)
        corr[np.arange(corr.shape[0]), np.arange(rows.start, rows.stop)] = np.nan  # a feature is not its own
        order = np.argsort(-np.nan_to_num(corr, nan=-np.inf), axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(corr, order, axis=1)
        keep = ~np.isnan(top)
        indices[rows] = np.where(keep, order, -1)
        pearson[rows] = top
        denominator = np.sqrt(coactivations.sum_sq_a[rows])[:, None] * norms[order]
        cos = np.take_along_axis(coactivations.cross[rows], order, axis=1) / np.where(denominator > 0, denominator, 1)
        cosine[rows] = np.where(keep, cos, np.nan)
    return Ranked(indices, pearson, cosine)
