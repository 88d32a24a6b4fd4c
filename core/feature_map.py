"""The feature map: one 2-D UMAP layout of the decoder directions of several SAEs together (both arms of a pair,
which share a residual basis when one model is a fine-tune of the other), so that features of the same
direction land at the same place whichever arm they belong to.

UMAP's own neighbour search (NN-descent) is approximate, and with a fixed seed runs on one thread. Here the
cosine neighbour graph is exact, from core.neighbours (blocked matmuls on every core), and UMAP only builds the
fuzzy graph from it and lays it out: deterministic for a seed, and the step that costs least to make exact.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.neighbours import decoder_neighbours, unit_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapSettings:
    """UMAP settings of the map (umap-learn's names); a stage key hashes them."""

    seed: int = 0  # UMAP's random_state: the same seed and weights give the same layout
    n_neighbors: int = 15  # umap's default: local structure at the scale of a handful of similar features
    min_dist: float = 0.1
    n_epochs: int | None = None  # None: umap's default (200 above 10,000 points, 500 below)

    def __post_init__(self) -> None:
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be at least 2, got {self.n_neighbors}")


def feature_layout(W_decs: list[Tensor], settings: MapSettings = MapSettings()) -> np.ndarray:
    """x, y [sum of d_sae, 2] float32 for the rows of every W_dec [d_sae_i, d_in] in order (all the same d_in)."""
    import umap  # imported here: numba compiles on import, and only this stage needs it

    widths = {int(W.shape[1]) for W in W_decs}
    if len(widths) != 1:
        raise ValueError(f"the decoders have different widths {sorted(widths)}: no shared space to map")
    rows = unit_rows(torch.cat([W.detach().float().cpu() for W in W_decs]))
    n = rows.shape[0]
    if n <= 2:
        return np.zeros((n, 2), np.float32)
    k = min(settings.n_neighbors, n - 1)
    knn_ids, knn_dists = _knn_graph(rows, k)
    reducer = umap.UMAP(n_neighbors=k, min_dist=settings.min_dist, metric="cosine", random_state=settings.seed,
                        n_epochs=settings.n_epochs, init="spectral", precomputed_knn=(knn_ids, knn_dists),
                        n_components=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(n_jobs|knn_search_index|transform).*")
        layout = reducer.fit_transform(rows.numpy())
    return np.asarray(layout, np.float32)


def _knn_graph(rows: Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's precomputed k-NN: each row first (distance 0), then its k - 1 nearest by cosine distance 1 - cos."""
    nearest = decoder_neighbours(rows, k=k - 1)
    ids = np.concatenate([np.arange(rows.shape[0])[:, None], nearest.ids], axis=1)
    dists = np.concatenate([np.zeros((rows.shape[0], 1), np.float32),
                            np.clip(1.0 - nearest.cosine, 0.0, 2.0)], axis=1)
    return ids.astype(np.int64), dists.astype(np.float32)
