"""The pair stages cut into shards: on two tiny models (a base and a perturbed copy, each with its own SAE), the
rows dealt into shards at random (whole batches, so every batch the models see is the one of the single pass),
each shard's accumulators pickled and merged in a random order, give the tables of the one-shard run: counts
exactly, floats to 1e-9 relative."""

import pickle

import numpy as np
import pytest
import torch

from core.hook_reads import activations_at_hook
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from factories import build_gpt2_folder, build_sae, byte_tokenizer, perturb_gpt2_folder
from precompute.pair import Pair
from precompute.stages import matching, similarity, transfer

HOOK = "blocks.1.hook_resid_pre"
N_ROWS, T, BATCH = 12, 16, 3


def loaded_arm(name, folder, seed):
    hf, tokenizer = load_hf_model(str(folder))
    torch.manual_seed(seed)
    sae = build_sae(d_in=32, d_sae=24, hook_name=HOOK)
    model = hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, "cpu")
    return LoadedArm(name, model, sae, HOOK, 24, "cpu", DEFAULT_PROCESSING)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = build_gpt2_folder(root / "base", byte_tokenizer())
    a = loaded_arm("base", base, seed=1)
    b = loaded_arm("tuned", perturb_gpt2_folder(base, root / "tuned", scale=0.05), seed=2)
    body = torch.randint(1, a.model.cfg.d_vocab, (N_ROWS, T - 1), generator=torch.Generator().manual_seed(0))
    rows = torch.cat([torch.zeros(N_ROWS, 1, dtype=torch.long), body], dim=1)  # id 0: BOS only
    return Pair(a, b, rows, BATCH, threshold=0.5, outlier_factor=1.15, progress=lambda desc: (lambda it: it))


def random_shards(pair, rng):
    """The pair's batches dealt at random into 2-4 non-empty shards, each shard's batches in a random order."""
    n_batches = N_ROWS // BATCH
    k = int(rng.integers(2, 5))
    owner = np.concatenate([np.arange(k), rng.integers(0, k, n_batches - k)])
    rng.shuffle(owner)
    return [torch.cat([pair.rows[i * BATCH:(i + 1) * BATCH] for i in rng.permutation(np.flatnonzero(owner == s))])
            for s in range(k)]


def merged(accumulators, rng):
    pool = [pickle.loads(pickle.dumps(acc)) for acc in accumulators]
    rng.shuffle(pool)
    first = pool.pop()
    for acc in pool:
        first.merge(acc)
    return first


def run_sharded(passes, pair, rng):
    shards, earlier = random_shards(pair, rng), None
    for shard in passes.passes:
        accumulator = merged([shard(pair, rows, earlier) for rows in shards], rng)
        earlier = accumulator.result()
    return passes.finish(pair, accumulator)


def assert_same_tables(ours, reference):
    (tables, metrics), (ref_tables, ref_metrics) = ours, reference
    assert tables.keys() == ref_tables.keys() and metrics.keys() == ref_metrics.keys()
    np.testing.assert_allclose([metrics[k] for k in ref_metrics], list(ref_metrics.values()), rtol=1e-9)
    for name, table in ref_tables.items():
        assert tables[name].column_names == table.column_names, name
        for column in table.column_names:
            mine, theirs = tables[name][column].to_numpy(zero_copy_only=False), table[column].to_numpy(zero_copy_only=False)
            if theirs.dtype.kind == "f":
                np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=0, err_msg=f"{name}.{column}")
            else:
                np.testing.assert_array_equal(mine, theirs, err_msg=f"{name}.{column}")


@pytest.mark.parametrize("stage", [similarity, matching, transfer], ids=lambda s: s.__name__.rsplit(".", 1)[-1])
def test_shards_merged_in_any_order_give_the_one_shard_tables(pair, stage):
    reference = stage.PASSES.run_whole(pair)
    for seed in range(3):  # each a different deal of the batches and merge order
        assert_same_tables(run_sharded(stage.PASSES, pair, np.random.default_rng(seed)), reference)


def test_the_transfer_filter_uses_the_median_over_every_shard(pair):
    """outlier_factor 1.15 leaves out the positions above 1.15 × the median norm of all rows (about one in eight
    here; shards with their own medians would leave out others): the count a filter set by hand gives."""
    tables, _ = transfer.PASSES.run_whole(pair)
    metrics = tables["transfer_metrics"].to_pandas().set_index(["sae_arm", "model_arm", "metric"]).value
    norms = activations_at_hook(pair.a.model, HOOK, pair.rows).float().norm(dim=-1)  # [N_ROWS, T - 1]
    expected = int((norms > 1.15 * norms.median()).sum())
    assert 0 < expected < norms.numel() // 2
    assert metrics["base", "base", "n_outliers"] == expected == metrics["tuned", "base", "n_outliers"]
