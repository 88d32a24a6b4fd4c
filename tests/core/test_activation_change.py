"""One SAE's features ranked by their change between two models, on hand-made activations: the sums against numpy,
the paired t-test against scipy's, the q-values against a brute-force Benjamini–Hochberg, the kept rows against a
brute-force ranking, and any split of the rows into pickled shards merged in any order against the single pass."""

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from core.activation_change import (FeatureChangeAccumulator, benjamini_hochberg, locate_rows, paired_t, ranked,
                                    row_fingerprints)

N_ROWS, T, D_SAE, SLOTS, BEFORE, AFTER = 40, 9, 6, 3, 2, 1
PLANTED_UP, PLANTED_DOWN = 4, 1

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(seed: int = 0):
    """Token rows [N_ROWS, T + 1] (BOS first) and SAE activations [N_ROWS, T, D_SAE] of model a and model b: b is a
    with feature PLANTED_UP raised by 0.5 + noise, feature PLANTED_DOWN lowered (clamped at 0), the rest noise."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.cat([torch.zeros(N_ROWS, 1, dtype=torch.long), torch.randint(1, 50, (N_ROWS, T), generator=g)], 1)
    a = torch.relu(torch.randn(N_ROWS, T, D_SAE, generator=g))
    b = (a + 0.05 * torch.randn(N_ROWS, T, D_SAE, generator=g)).clamp_min(0)
    b[..., PLANTED_UP] = a[..., PLANTED_UP] + 0.5 + 0.1 * torch.rand(N_ROWS, T, generator=g)
    b[..., PLANTED_DOWN] = (a[..., PLANTED_DOWN] - 0.8).clamp_min(0)
    a[..., 5] = 0.0  # a dead feature: fires in neither model
    b[..., 5] = 0.0
    return rows, a, b


def accumulate(rows, a, b, batches) -> FeatureChangeAccumulator:
    acc = FeatureChangeAccumulator(D_SAE, SLOTS, BEFORE, AFTER)
    for batch in batches:
        acc.update(a[batch], b[batch], row_fingerprints(rows[batch]))
    return acc


def test_benjamini_hochberg_matches_a_brute_force_definition_and_scipy():
    p = np.random.default_rng(1).uniform(size=50) ** 3
    p[[3, 9]] = p[7]  # ties
    m = len(p)
    rank = {i: sorted(p).index(p[i]) + 1 + sorted(p).count(p[i]) - 1 for i in range(m)}  # largest rank of its value
    brute = [min(min(1.0, p[j] * m / rank[j]) for j in range(m) if p[j] >= p[i]) for i in range(m)]
    np.testing.assert_allclose(benjamini_hochberg(p), brute, rtol=1e-12)
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p), rtol=1e-12)


def test_paired_t_is_scipys_one_sample_t_on_the_row_changes():
    d = np.random.default_rng(2).normal(0.1, 1.0, size=(35, 4))
    t, p, sd = paired_t(d.sum(0), (d**2).sum(0), len(d))
    reference = stats.ttest_1samp(d, 0.0)
    np.testing.assert_allclose(t, reference.statistic, rtol=1e-9)
    np.testing.assert_allclose(p, reference.pvalue, rtol=1e-9)
    np.testing.assert_allclose(sd, d.std(0, ddof=1), rtol=1e-9)
    t, p, _ = paired_t(np.array([0.0, 3.0]), np.array([0.0, 3.0 * 0.01]), 300)  # d_r all 0; all 0.01
    assert t[0] == 0.0 and p[0] == 1.0 and math.isinf(t[1]) and p[1] == 0.0


def test_sums_test_and_kept_rows_match_a_brute_force_pass():
    rows, a, b = planted()
    change = accumulate(rows, a, b, [range(0, 17), range(17, N_ROWS)]).result()
    an, bn = a.double().numpy(), b.double().numpy()
    np.testing.assert_allclose(change.mean_a, an.mean((0, 1)), rtol=1e-9)
    np.testing.assert_allclose(change.change, (bn - an).mean((0, 1)), rtol=1e-9, atol=1e-15)
    assert change.n_fired_b.tolist() == (bn > 0).sum((0, 1)).tolist() and change.n_tokens == N_ROWS * T
    d = (b - a).double().numpy().mean(1)  # [rows, features]: per-token changes as the pass takes them, in float32
    live = [f for f in range(D_SAE) if f != 5]
    np.testing.assert_allclose(change.p[live], stats.ttest_1samp(d[:, live], 0.0).pvalue, rtol=1e-6)
    np.testing.assert_allclose(change.q[live], stats.false_discovery_control(change.p[live]), rtol=1e-12)
    assert np.isnan(change.q[5]) and change.p[5] == 1.0 and not change.live[5]
    assert ranked(change.change, 1, "increase").tolist() == [PLANTED_UP]
    assert ranked(change.change, 1, "decrease").tolist() == [PLANTED_DOWN]
    for direction, sign in (("increase", 1), ("decrease", -1)):
        kept = getattr(change, direction)
        for f in range(D_SAE):
            moved = [r for r in range(N_ROWS) if sign * d[r, f] > 0]
            best = sorted(moved, key=lambda r: -sign * d[r, f])[:SLOTS]
            assert locate_rows(kept.fingerprint[f], rows).tolist()[:len(best)] == best, (direction, f)
            for slot, r in enumerate(best):
                np.testing.assert_allclose(kept.row_change[f, slot], d[r, f], rtol=1e-6)
                pos = int(np.argmax(sign * (bn[r, :, f] - an[r, :, f])))
                assert kept.pos[f, slot] == pos
                window = [an[r, p, f] if 0 <= p < T else 0.0 for p in range(pos - BEFORE, pos + AFTER + 1)]
                np.testing.assert_allclose(kept.acts_a[f, slot], window, rtol=1e-6)
            assert (kept.fingerprint[f, len(best):] == -1).all()


def test_identical_activations_change_nothing_and_keep_no_rows():
    rows, a, _ = planted()
    change = accumulate(rows, a, a.clone(), [range(N_ROWS)]).result()
    assert (change.change == 0).all() and (change.t == 0).all() and (change.p == 1).all()
    assert (change.q[change.live] == 1).all()
    assert (change.increase.fingerprint == -1).all() and (change.decrease.fingerprint == -1).all()
    assert ranked(change.change, 10, "increase").size == 0


@pytest.mark.parametrize("seed", range(6))
def test_any_sharding_pickled_and_merged_in_any_order_is_the_single_pass(seed):
    rows, a, b = planted()
    whole = accumulate(rows, a, b, [range(N_ROWS)]).result()
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, 3, N_ROWS)
    shards = []
    for s in range(3):
        mine = rng.permutation(np.flatnonzero(owner == s))
        cuts = np.sort(rng.choice(np.arange(1, max(len(mine), 2)), size=min(2, max(len(mine) - 1, 0)), replace=False))
        shards.append(pickle.loads(pickle.dumps(accumulate(rows, a, b, np.split(mine, cuts)))))
    order = rng.permutation(3)
    merged = shards[order[0]].merge(shards[order[1]]).merge(shards[order[2]]).result()
    for name in ("mean_a", "mean_b", "row_change_sd", "t", "p", "q"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-9, err_msg=name)
    assert merged.n_fired_a.tolist() == whole.n_fired_a.tolist() and merged.n_rows == whole.n_rows
    for direction in ("increase", "decrease"):
        for name in ("fingerprint", "pos", "row_change", "acts_a", "acts_b"):
            np.testing.assert_array_equal(getattr(getattr(merged, direction), name),
                                          getattr(getattr(whole, direction), name), err_msg=f"{direction}.{name}")


def test_fingerprints_tell_rows_apart_and_find_them_again():
    rows = torch.randint(0, 50_000, (2_000, 64), generator=torch.Generator().manual_seed(0))
    rows[7] = rows[3]  # a repeated row: the first of them is found
    fingerprints = row_fingerprints(rows)
    assert len(set(fingerprints.tolist())) == 1_999 and (fingerprints >= 0).all()
    shuffled = torch.randperm(2_000, generator=torch.Generator().manual_seed(1))
    found = locate_rows(fingerprints[shuffled].numpy(), rows)
    expected = torch.where(shuffled == 7, 3, shuffled).numpy()
    assert found.tolist() == expected.tolist()
    assert locate_rows(np.array([-1, 12345]), rows).tolist() == [-1, -1]


def test_a_repeated_row_keeps_its_token_of_largest_change_in_every_slot():
    """Two rows with the same tokens and activations share a fingerprint and tie on every key: both are kept
    (named by the first of them) with their windows centred where the row changed most, and with one slot the
    repeat that ties the kept key leaves it as it was."""
    rows, a, b = planted()
    rows[5], a[5], b[5] = rows[2], a[2], b[2]
    b[2, 6, 0] = b[5, 6, 0] = 50.0  # rows 2 and 5 change most on feature 0, at position 6
    for slots in (1, SLOTS):  # one slot: the repeat ties with the kept set's last key
        acc = FeatureChangeAccumulator(D_SAE, slots, BEFORE, AFTER)
        for batch in ([0, 1, 2, 3], [4, 5, 6], list(range(7, N_ROWS))):
            acc.update(a[batch], b[batch], row_fingerprints(rows[batch]))
        kept = acc.result().increase
        n = min(slots, 2)
        assert locate_rows(kept.fingerprint[0, :n], rows).tolist() == [2] * n and kept.pos[0, :n].tolist() == [6] * n
