"""The activation accumulator is mergeable: any split of the corpus rows into shards (contiguous or not, each
fed in its own batches), merged in any order, gives the single-pass result, exactly for counts, maxima and
the kept contexts (with their tie rule), to 1e-9 relative for float64 sums. Seeded random splits stand in for
a property-testing library."""

import pickle

import numpy as np
import pytest
import torch

from core.activations import ActivationAccumulator
from core.config import ActivationsConfig

N_ROWS, T, D_SAE, D_VOCAB = 30, 10, 5, 16
CONFIG = ActivationsConfig(batch_size=4, top_contexts=3, window_before=2, window_after=1, samples_per_interval=2,
                           fired_tokens=3)
MEDICAL = torch.arange(D_VOCAB) % 3 == 0


def tied_corpus():
    """Activations on a coarse grid (0.5, 1, ..., 4 and 0.01 steps), so many rows share a max and many firings a
    value; rows 20-29 repeat rows 0-9 exactly (a corpus with duplicate lines), so ties cross rows everywhere."""
    generator = torch.Generator().manual_seed(7)
    acts = torch.randint(0, 9, (N_ROWS, T, D_SAE), generator=generator).float() * 0.5
    acts = acts * (torch.rand(N_ROWS, T, D_SAE, generator=generator) < 0.4)
    acts[:, :, 4] *= 0.02  # feature 4 fires weakly: its samples fall in other intervals
    tokens = torch.randint(0, D_VOCAB, (N_ROWS, T), generator=generator)
    acts[20:], tokens[20:] = acts[:10], tokens[:10]
    rows = torch.cat([torch.full((N_ROWS, 1), D_VOCAB - 1), tokens], dim=1)
    return acts, tokens, rows


def shard_accumulator(acts, tokens, row_ids, batch_size):
    acc = ActivationAccumulator(D_SAE, D_VOCAB, CONFIG, MEDICAL, seed=3)
    for start in range(0, len(row_ids), batch_size):
        ids = row_ids[start:start + batch_size]
        acc.update(acts[ids], tokens[ids], ids)
    return acc


def random_split(rng, n_rows):
    """Rows shuffled (or not) and cut into 1 to 6 shards of random sizes, some possibly empty."""
    order = rng.permutation(n_rows) if rng.random() < 0.5 else np.arange(n_rows)
    cuts = np.sort(rng.integers(0, n_rows + 1, size=rng.integers(0, 6)))
    return [torch.as_tensor(part, dtype=torch.long) for part in np.split(order, cuts)]


def merged_in_random_order(rng, accumulators):
    """A random merge tree: repeatedly merge two random accumulators (either into the other)."""
    pool = list(accumulators)
    while len(pool) > 1:
        i, j = rng.choice(len(pool), size=2, replace=False)
        merged = pool[i].merge(pool[j])
        pool = [a for k, a in enumerate(pool) if k not in (i, j)] + [merged]
    return pool[0]


def assert_same_summary(merged, single):
    assert merged.n_tokens == single.n_tokens and merged.n_medical_tokens == single.n_medical_tokens
    for name in ("n_fired", "med_fired", "max_act", "hist_counts", "unigram"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(single, name), err_msg=name)
    for name in ("sum_act", "sum_sq_act"):
        np.testing.assert_allclose(getattr(merged, name), getattr(single, name), rtol=1e-9, err_msg=name)
    for kind in ("top", "intervals"):
        for name in ("max_act", "row", "max_pos", "window_token_ids", "window_acts"):
            np.testing.assert_array_equal(getattr(getattr(merged, kind), name), getattr(getattr(single, kind), name),
                                          err_msg=f"{kind}.{name}")
    np.testing.assert_array_equal(merged.fired_tokens.token_id, single.fired_tokens.token_id)
    np.testing.assert_array_equal(merged.fired_tokens.count, single.fired_tokens.count)
    np.testing.assert_allclose(merged.fired_tokens.sum_act, single.fired_tokens.sum_act, rtol=1e-9)


@pytest.mark.parametrize("seed", range(40))
def test_any_split_merged_in_any_order_equals_the_single_pass(seed):
    acts, tokens, rows = tied_corpus()
    single = shard_accumulator(acts, tokens, torch.arange(N_ROWS), N_ROWS).result(rows)
    rng = np.random.default_rng(seed)
    shards = [shard_accumulator(acts, tokens, ids, int(rng.integers(1, 8))) for ids in random_split(rng, N_ROWS)]
    if rng.random() < 0.5:  # through pickle, as a Ray worker returns it
        shards = [pickle.loads(pickle.dumps(acc)) for acc in shards]
    assert_same_summary(merged_in_random_order(rng, shards).result(rows), single)


def test_the_tie_rule_keeps_the_earlier_row_among_equal_maxima():
    """Feature 0 peaks at exactly 2.0 in rows 3, 7, 11 and 15 (and nowhere higher); with 3 slots the kept rows
    are 3, 7 and 11 whichever shard holds which row and whichever shard is merged first."""
    acts = torch.zeros(N_ROWS, T, D_SAE)
    acts[:, :, 0] = 0.5
    for row in (15, 7, 11, 3):
        acts[row, 4, 0] = 2.0
    tokens = torch.zeros(N_ROWS, T, dtype=torch.long)
    rows = torch.cat([torch.zeros(N_ROWS, 1, dtype=torch.long), tokens], dim=1)
    for split in ([[15, 11], [7, 3]], [[3], [15, 7, 11]], [[11, 7, 15, 3]]):
        others = [r for r in range(N_ROWS) if r not in sum(split, [])]
        shards = [shard_accumulator(acts, tokens, torch.tensor(ids), 2) for ids in split + [others]]
        top = merged_in_random_order(np.random.default_rng(0), shards).result(rows).top
        assert top.row[0].tolist() == [3, 7, 11] and top.max_act[0].tolist() == [2.0, 2.0, 2.0]


def test_merging_accumulators_of_different_configs_is_an_error():
    acc = ActivationAccumulator(D_SAE, D_VOCAB, CONFIG, MEDICAL, seed=3)
    with pytest.raises(ValueError, match="different"):
        acc.merge(ActivationAccumulator(D_SAE, D_VOCAB, CONFIG, MEDICAL, seed=4))
