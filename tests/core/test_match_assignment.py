"""The one-to-one assignment: a known permutation survives, a planted many-to-one keeps its best pair, and on
random candidate graphs the total correlation equals the best of every matching, enumerated by brute force."""

import itertools

import numpy as np
import pytest

from core.match_assignment import assigned_partner, one_to_one


def brute_force_best(a, b, corr):
    """The largest total weight over every set of pairs that uses no feature twice."""
    best = 0.0
    for size in range(1, len(a) + 1):
        for chosen in itertools.combinations(range(len(a)), size):
            if len({a[k] for k in chosen}) == size and len({b[k] for k in chosen}) == size:
                best = max(best, sum(corr[k] for k in chosen))
    return best


def test_a_known_permutation_is_kept_whole():
    perm = np.random.default_rng(0).permutation(12)
    kept = one_to_one(np.arange(12), perm, np.full(12, 0.9), 12, 12)
    assert kept.all()
    partner, value = assigned_partner(np.arange(12), perm, np.full(12, 0.9, np.float32), kept, 12)
    assert partner.tolist() == perm.tolist() and np.allclose(value, 0.9)


def test_a_planted_many_to_one_keeps_only_the_strongest_pair():
    """A 0 is the best match of B 0, 1, 2 (0.85, 0.95, 0.9); B 2 also matches A 1 at 0.82. The best matching
    is A0-B1 and A1-B2 (1.77), not A0-B1 alone."""
    a, b = np.array([0, 0, 0, 1]), np.array([0, 1, 2, 2])
    corr = np.array([0.85, 0.95, 0.9, 0.82])
    kept = one_to_one(a, b, corr, 2, 3)
    assert kept.tolist() == [False, True, False, True]
    partner_b, _ = assigned_partner(b, a, corr.astype(np.float32), kept, 3)
    assert partner_b.tolist() == [-1, 0, 1]


@pytest.mark.parametrize("seed", range(25))
def test_total_correlation_equals_brute_force_on_random_candidate_graphs(seed):
    rng = np.random.default_rng(seed)
    d_a, d_b = rng.integers(2, 6, size=2)
    cells = [(i, j) for i in range(d_a) for j in range(d_b)]
    pick = rng.choice(len(cells), size=min(len(cells), int(rng.integers(1, 9))), replace=False)
    a = np.array([cells[k][0] for k in pick])
    b = np.array([cells[k][1] for k in pick])
    corr = rng.uniform(0.8, 1.0, size=len(pick))
    kept = one_to_one(a, b, corr, int(d_a), int(d_b))
    assert len(set(a[kept])) == kept.sum() == len(set(b[kept]))  # one-to-one
    assert corr[kept].sum() == pytest.approx(brute_force_best(a, b, corr), abs=1e-12)


def test_no_pairs_and_non_positive_weights():
    assert one_to_one(np.zeros(0), np.zeros(0), np.zeros(0), 3, 3).size == 0
    with pytest.raises(ValueError, match="positive"):
        one_to_one(np.array([0]), np.array([0]), np.array([0.0]), 1, 1)
