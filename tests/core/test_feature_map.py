"""The feature map: a deterministic layout for a seed, in which directions shared by two SAEs land together."""

import numpy as np
import pytest
import torch

from core.feature_map import MapSettings, _knn_graph, feature_layout
from core.neighbours import unit_rows


def clustered_decoders(n_clusters=4, per_arm=30, d_in=24, noise=0.05):
    """Two SAEs whose rows are noisy copies of n_clusters shared directions; row i belongs to cluster i % n."""
    centres = torch.randn(n_clusters, d_in) * 3
    arms = [centres[torch.arange(per_arm) % n_clusters] + noise * torch.randn(per_arm, d_in) for _ in range(2)]
    return arms, np.tile(np.arange(per_arm) % n_clusters, 2)


@pytest.mark.slow  # numba compiles UMAP on first use: tens of seconds on a loaded 2-core machine
def test_same_seed_same_layout_other_seed_other_layout_and_shared_directions_cluster():
    arms, cluster = clustered_decoders()
    first = feature_layout(arms, MapSettings(seed=3, n_neighbors=5))
    assert first.shape == (60, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(feature_layout(arms, MapSettings(seed=3, n_neighbors=5)), first)
    assert not np.allclose(feature_layout(arms, MapSettings(seed=4, n_neighbors=5)), first)
    gaps = np.linalg.norm(first[:, None] - first[None], axis=2)
    same = cluster[:, None] == cluster[None]
    assert gaps[same].max() < gaps[~same].min()  # every cluster apart from the others, both arms' rows mixed in it


def test_the_knn_graph_is_exact_and_starts_with_each_point_itself():
    rows = unit_rows(torch.randn(50, 8))
    ids, dists = _knn_graph(rows, 6)
    assert ids.shape == dists.shape == (50, 6)
    assert (ids[:, 0] == np.arange(50)).all() and (dists[:, 0] == 0).all()
    cosine = (rows @ rows.T).numpy()
    np.fill_diagonal(cosine, -np.inf)
    np.testing.assert_array_equal(ids[:, 1:], np.argsort(-cosine, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(dists[:, 1:], 1 - np.take_along_axis(cosine, ids[:, 1:], 1), atol=1e-6)


def test_decoders_of_different_widths_have_no_shared_map():
    with pytest.raises(ValueError, match="different widths"):
        feature_layout([torch.randn(5, 8), torch.randn(5, 16)])
