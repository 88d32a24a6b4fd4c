"""The pair passes' accumulators merge: any split of the rows into shards, each fed in batches of any size,
pickled (as a Ray worker returns them) and merged in any order, gives the single pass: counts, histograms and
medians exactly, float64 sums to 1e-9 relative. Each is also checked against a brute-force numpy reference."""

import pickle

import numpy as np
import pytest
import torch

from core.accumulator import AccumulatorMap
from core.hook_reads import HookLosses
from core.matching import CoactivationAccumulator, match_features
from core.model_diff import COSINE_EDGES, DISTANCE_EDGES, ActivationSimilarityAccumulator, NormSample, \
    TransferAccumulator

SPLITS = 40  # seeded random splits per accumulator
RTOL = 1e-9


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_shards(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Rows 0..n-1 dealt at random into 1-5 non-empty shards (not contiguous), each in a random order."""
    k = int(rng.integers(1, 6))
    owner = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    rng.shuffle(owner)
    return [rng.permutation(np.flatnonzero(owner == s)) for s in range(k)]


def random_batches(rows: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """`rows` cut into consecutive batches of random sizes (1 to half the shard)."""
    cuts, start = [], 0
    while start < len(rows):
        stop = start + int(rng.integers(1, max(2, len(rows) // 2 + 1)))
        cuts.append(rows[start:stop])
        start = stop
    return cuts


def merge_in_random_order(accumulators: list, rng: np.random.Generator):
    """Each shard's accumulator pickled and unpickled, then any two merged at random until one is left."""
    pool = [pickle.loads(pickle.dumps(acc)) for acc in accumulators]
    while len(pool) > 1:
        i, j = rng.choice(len(pool), size=2, replace=False)
        merged = pool[i].merge(pool[j])
        pool = [acc for k, acc in enumerate(pool) if k not in (i, j)] + [merged]
    return pool[0]


def sharded(n_rows: int, seed: int, new, feed):
    """The accumulator over n_rows rows built shard by shard: `new()` makes one, `feed(acc, rows)` folds rows in."""
    rng = np.random.default_rng(seed)
    shards = []
    for rows in random_shards(n_rows, rng):
        acc = new()
        for batch in random_batches(rows, rng):
            feed(acc, batch)
        shards.append(acc)
    return merge_in_random_order(shards, rng)


# --- co-activations (matching) ---------------------------------------------------------------------------------

def planted_activations(seed: int = 0, n: int = 300, d: int = 10):
    """A [n, d] sparse non-negative; B [n, d + 2]: B feature j is 3 × A feature PERM[j], plus 2 new ones."""
    generator = torch.Generator().manual_seed(seed)
    a = (torch.rand(n, d, generator=generator) < 0.2) * (0.5 + torch.rand(n, d, generator=generator))
    perm = torch.randperm(d, generator=generator)
    new = (torch.rand(n, 2, generator=generator) < 0.2) * torch.rand(n, 2, generator=generator)
    return a, torch.cat([3 * a[:, perm], new], dim=1), perm.numpy()


def coactivations_over(a, b, rows, sparse=False, acc=None):
    acc = acc or CoactivationAccumulator(a.shape[1], b.shape[1])
    index = torch.as_tensor(rows)
    acc.update(a[index], b[index].to_sparse() if sparse else b[index])
    return acc


def assert_same_coactivations(ours, reference):
    assert ours.n_tokens == reference.n_tokens
    np.testing.assert_array_equal(ours.n_fired_a, reference.n_fired_a)
    np.testing.assert_array_equal(ours.n_fired_b, reference.n_fired_b)
    for name in ("sum_a", "sum_sq_a", "sum_b", "sum_sq_b", "cross"):
        np.testing.assert_allclose(getattr(ours, name), getattr(reference, name), rtol=RTOL, atol=0, err_msg=name)


def test_coactivations_of_any_shards_merged_in_any_order_equal_one_pass():
    a, b, _ = planted_activations(n=80)  # few tokens: each split makes dozens of sparse products
    one_pass = coactivations_over(a, b, np.arange(len(a))).result()
    single = match_features(one_pass)
    for seed in range(SPLITS):
        merged = sharded(len(a), seed, lambda: CoactivationAccumulator(a.shape[1], b.shape[1]),
                         lambda acc, rows: coactivations_over(a, b, rows, sparse=len(rows) % 2 == 0, acc=acc))
        assert_same_coactivations(merged.result(), one_pass)
        matches = match_features(merged.result())
        np.testing.assert_array_equal(matches.a_match, single.a_match)
        np.testing.assert_array_equal(matches.b_status, single.b_status)


def test_merged_shards_recover_a_planted_permutation_with_correlation_one_as_numpy_does():
    a, b, perm = planted_activations(seed=1)
    merged = sharded(len(a), 0, lambda: CoactivationAccumulator(a.shape[1], b.shape[1]),
                     lambda acc, rows: coactivations_over(a, b, rows, acc=acc)).result()
    expected = np.corrcoef(a.numpy().T.astype(np.float64), b.numpy().T.astype(np.float64))[:10, 10:]
    np.testing.assert_allclose(merged.correlation(), expected, rtol=0, atol=1e-12)
    matches = match_features(merged, threshold=0.8)
    np.testing.assert_array_equal(matches.b_match[:10], perm)  # B feature j is A feature perm[j]
    np.testing.assert_allclose(matches.b_corr[:10], 1.0, atol=1e-6)
    assert matches.b_status.tolist() == ["persist"] * 10 + ["emerge"] * 2


def test_sums_held_off_the_numpy_state_reach_it_on_merge_pickle_and_result():
    """The path a GPU takes (batch sums kept on the device between flushes), run on the CPU."""
    a, b, _ = planted_activations(seed=2)
    reference = coactivations_over(a, b, np.arange(len(a))).result()
    staged = CoactivationAccumulator(a.shape[1], b.shape[1])
    staged._on_state = False  # what a CUDA device sets: batches add into device buffers, not the numpy state
    coactivations_over(a, b, np.arange(0, 100), acc=staged)
    assert staged.cross.sum() == 0  # still on the "device"
    travelled = pickle.loads(pickle.dumps(staged))  # pickling flushes: the numpy state travels
    coactivations_over(a, b, np.arange(100, 200), acc=travelled)
    other = CoactivationAccumulator(a.shape[1], b.shape[1])
    other._on_state = False
    coactivations_over(a, b, np.arange(200, len(a)), acc=other)
    assert_same_coactivations(travelled.merge(other).result(), reference)


def test_merging_co_activations_of_other_widths_is_refused():
    with pytest.raises(ValueError, match="cannot merge"):
        CoactivationAccumulator(4, 5).merge(CoactivationAccumulator(5, 4))


# --- activation similarity -------------------------------------------------------------------------------------

def test_similarity_of_any_shards_merged_in_any_order_equals_one_pass_and_numpy():
    generator = torch.Generator().manual_seed(0)
    acts_a = torch.randn(30, 7, 5, generator=generator, dtype=torch.float64)
    acts_b = acts_a + 0.8 * torch.randn(30, 7, 5, generator=generator, dtype=torch.float64)
    acts_b[3, 2] = acts_a[3, 2]  # distance 0: the first distance bin

    def feed(acc, rows):
        acc.update(acts_a[torch.as_tensor(rows)], acts_b[torch.as_tensor(rows)])

    one = ActivationSimilarityAccumulator(7)
    feed(one, np.arange(30))
    x, y = acts_a.numpy(), acts_b.numpy()
    cosine = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)  # [30, 7]
    distance = np.linalg.norm(x - y, axis=-1)
    reference = one.result()
    np.testing.assert_allclose(reference.mean_cosine_by_position, cosine.mean(0), rtol=1e-12)
    np.testing.assert_array_equal(reference.cosine_hist, np.histogram(cosine, COSINE_EDGES)[0])
    assert reference.distance_hist[0] == 1 and reference.distance_hist.sum() == 30 * 7
    assert np.array_equal(reference.distance_hist[1:], np.histogram(distance[distance > 0], DISTANCE_EDGES)[0][1:])
    for seed in range(SPLITS):
        merged = sharded(30, seed, lambda: ActivationSimilarityAccumulator(7), feed)
        np.testing.assert_array_equal(merged.count, one.count)
        np.testing.assert_array_equal(merged.cosine_hist, one.cosine_hist)
        np.testing.assert_array_equal(merged.distance_hist, one.distance_hist)
        np.testing.assert_allclose(merged.sum_cosine, one.sum_cosine, rtol=RTOL, atol=0)
        np.testing.assert_allclose(merged.sum_distance, one.sum_distance, rtol=RTOL, atol=0)


def test_similarity_shards_of_shorter_rows_merge_by_position():
    """A shard whose rows reach only position 2 adds to positions 1-2 and leaves position 3 to the others."""
    short, full = ActivationSimilarityAccumulator(3), ActivationSimilarityAccumulator(3)
    short.update(torch.ones(2, 2, 1), torch.ones(2, 2, 1))
    full.update(torch.ones(1, 3, 1), -torch.ones(1, 3, 1))
    result = short.merge(full).result()
    np.testing.assert_array_equal(result.position, [1, 2, 3])
    np.testing.assert_allclose(result.mean_cosine_by_position, [1 / 3, 1 / 3, -1.0])
    with pytest.raises(ValueError, match="positions"):
        short.merge(ActivationSimilarityAccumulator(4))


# --- SAE transfer: norms, then the spliced pass ----------------------------------------------------------------

def test_the_median_norm_of_any_shards_is_torchs_median_exactly():
    norms = torch.tensor(np.random.default_rng(0).choice([0.5, 1.0, 2.0, 3.0, 7.0], size=(21, 4)), dtype=torch.float32)

    def feed(sample, rows):
        sample.update(norms[torch.as_tensor(rows)])

    for n_rows in (21, 20):  # 84 and 80 norms: an even count takes the lower middle value, as torch does
        expected = float(norms[:n_rows].median())
        for seed in range(SPLITS):
            assert sharded(n_rows, seed, NormSample, feed).result() == expected
    assert np.isnan(NormSample().result())


def transfer_data(n_rows=24, positions=5, d_in=6, d_sae=8, seed=0):
    """Per row: kept-position activations x, x̂ [positions, d_in], feature activations [positions, d_sae], and
    the row's three CE losses per predicted token [positions, 3]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 1.0, (n_rows, positions, d_in))
    x_hat = x + rng.normal(0, 0.3, x.shape)
    acts = np.maximum(rng.normal(-0.5, 1.0, (n_rows, positions, d_sae)), 0)
    acts[:, :, 0] = 0  # a dead feature
    losses = rng.uniform(2, 6, (n_rows, positions, 3))
    return x, x_hat, acts, losses


def feed_transfer(data, acc, rows, n_outliers_per_row=1):
    """A batch of rows folded in as the splice hook and the loss loop fold it: each row had one more position,
    an outlier left out (so the batch's positions are kept + 1 per row)."""
    x, x_hat, acts, losses = (torch.as_tensor(part[rows]) for part in data)
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    acc.update(flat(x), flat(acts), flat(x_hat), n_positions=x.shape[0] * (x.shape[1] + n_outliers_per_row))
    mean = losses.reshape(-1, 3).mean(0)
    acc.add_losses(HookLosses(*mean.tolist()), n_predicted=losses.shape[0] * losses.shape[1])


def test_transfer_of_any_shards_merged_in_any_order_equals_one_pass_and_numpy():
    data = transfer_data()
    new = lambda: TransferAccumulator(d_in=6, d_sae=8, median_norm=1.5, outlier_threshold=15.0)  # noqa: E731
    one = new()
    feed_transfer(data, one, np.arange(24))
    expected = one.result()
    x, x_hat, acts, losses = (part.reshape(-1, part.shape[-1]) for part in data)
    r = expected.quality.reconstruction
    assert r.n_tokens == 120 and expected.n_positions == 144 and expected.n_outliers == 24
    assert r.explained_variance == pytest.approx(1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-12)
    assert r.mse == pytest.approx(((x - x_hat) ** 2).mean(), rel=1e-12)
    assert r.l0 == pytest.approx((acts > 0).sum(1).mean(), rel=1e-12) and r.dead_fraction == 1 / 8
    np.testing.assert_array_equal(expected.density, (acts > 0).mean(0))
    assert expected.quality.ce_loss_spliced == pytest.approx(losses[:, 1].mean(), rel=1e-12)
    for seed in range(SPLITS):
        merged = sharded(24, seed, new, lambda acc, rows: feed_transfer(data, acc, rows)).result()
        assert (merged.n_positions, merged.n_outliers) == (expected.n_positions, expected.n_outliers)
        np.testing.assert_array_equal(merged.density, expected.density)
        ours, theirs = merged.quality, expected.quality
        for name in ("l0", "explained_variance", "mse", "dead_fraction"):
            assert getattr(ours.reconstruction, name) == pytest.approx(getattr(theirs.reconstruction, name), rel=RTOL)
        for name in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablation"):
            assert getattr(ours, name) == pytest.approx(getattr(theirs, name), rel=RTOL)


def test_transfers_filtered_at_other_thresholds_do_not_merge():
    with pytest.raises(ValueError, match="median over all shards"):
        TransferAccumulator(2, 3, 1.0, 10.0).merge(TransferAccumulator(2, 3, 2.0, 20.0))


def test_an_accumulator_map_merges_key_by_key_and_refuses_other_keys():
    left = AccumulatorMap({"base": NormSample(), "tuned": NormSample()})
    right = AccumulatorMap({"base": NormSample(), "tuned": NormSample()})
    left["base"].update(torch.tensor([1.0, 5.0]))
    right["base"].update(torch.tensor([3.0]))
    right["tuned"].update(torch.tensor([2.0]))
    assert pickle.loads(pickle.dumps(left)).merge(right).result() == {"base": 3.0, "tuned": 2.0}
    with pytest.raises(ValueError, match="cannot merge"):
        left.merge(AccumulatorMap({"base": NormSample()}))
