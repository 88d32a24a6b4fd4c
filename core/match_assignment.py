"""A one-to-one matching of two SAEs' features: of the pairs that correlate at or above the threshold, the set in
which no feature is used twice and the total correlation is largest (a maximum-weight bipartite matching).

The best-match view lets one base feature be the best match of 58 fine-tuned ones; the assignment keeps one of
them. It is exact: the candidate graph is split into connected components, and each component's pairs go to
the Hungarian method (scipy's `linear_sum_assignment`) as a dense block whose missing pairs weigh 0. Every
candidate weighs at least the threshold (> 0), so a best assignment of the block, with its zero-weight pairs
dropped, is a best matching of the component. Components are small (a feature and its partners), so nothing
of size d_sae_a × d_sae_b is ever built.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def one_to_one(pair_a: np.ndarray, pair_b: np.ndarray, corr: np.ndarray, d_sae_a: int, d_sae_b: int) -> np.ndarray:
    """[n_pairs] bool: the pairs (pair_a[k], pair_b[k]) with weight corr[k] > 0 kept by a maximum-weight matching."""
    pair_a, pair_b = np.asarray(pair_a, np.int64), np.asarray(pair_b, np.int64)
    corr = np.asarray(corr, np.float64)
    if pair_a.size and corr.min() <= 0:
        raise ValueError("one_to_one needs positive weights (pairs at or above a positive threshold)")
    kept = np.zeros(pair_a.size, dtype=bool)
    if not pair_a.size:
        return kept
    n_nodes = d_sae_a + d_sae_b
    graph = coo_matrix((np.ones(pair_a.size), (pair_a, d_sae_a + pair_b)), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    edge_component = component[pair_a]
    order = np.argsort(edge_component, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_component[order])) + 1
    for edges in np.split(order, bounds):
        kept[edges[_best_block(pair_a[edges], pair_b[edges], corr[edges])]] = True
    return kept


def _best_block(a: np.ndarray, b: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """Indices into the component's edges that a maximum-weight matching keeps."""
    if a.size == 1:
        return np.zeros(1, dtype=np.int64)
    rows, row_of = np.unique(a, return_inverse=True)
    cols, col_of = np.unique(b, return_inverse=True)
    weight = np.zeros((rows.size, cols.size))
    edge = np.full((rows.size, cols.size), -1, dtype=np.int64)
    weight[row_of, col_of] = corr
    edge[row_of, col_of] = np.arange(a.size)
    chosen_rows, chosen_cols = linear_sum_assignment(weight, maximize=True)
    chosen = edge[chosen_rows, chosen_cols]
    return chosen[chosen >= 0]


def assigned_partner(pair_own: np.ndarray, pair_other: np.ndarray, corr: np.ndarray, kept: np.ndarray,
                     d_sae: int) -> tuple[np.ndarray, np.ndarray]:
    """Per feature of one arm [d_sae]: its assigned partner (-1 if none) and their correlation (NaN if none)."""
    partner = np.full(d_sae, -1, dtype=np.int64)
    value = np.full(d_sae, np.nan, dtype=np.float32)
    partner[pair_own[kept]] = pair_other[kept]
    value[pair_own[kept]] = corr[kept]
    return partner, value
