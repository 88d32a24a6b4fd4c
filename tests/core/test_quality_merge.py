"""The quality accumulator is mergeable: token counts, active-feature counts and dead features exactly, the
float64 sums (squared error, squared norm, Σx, CE losses) to 1e-9 relative, the median norm exactly, whatever
the split and the merge order; and a real quality pass over shards of rows equals the pass over all of them."""

import numpy as np
import pytest
import torch

from core.loading import DEFAULT_PROCESSING, hooked_transformer_from_hf, load_hf_model
from core.sae_metrics import QualityAccumulator, quality_pass, sae_quality
from factories import build_gpt2_folder, build_sae, byte_tokenizer

HOOK = "blocks.1.hook_resid_pre"
N_TOKENS, D_IN, D_SAE = 120, 8, 12


def synthetic_tokens():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(N_TOKENS, D_IN, generator=generator) * 3 + 1
    feature_acts = torch.relu(torch.randn(N_TOKENS, D_SAE, generator=generator) - 1.0)
    feature_acts[:, 11] = 0  # never fires: dead
    x_hat = x + 0.1 * torch.randn(N_TOKENS, D_IN, generator=generator)
    losses = torch.rand(N_TOKENS, 3, generator=generator, dtype=torch.float64) * 5
    return x, feature_acts, x_hat, losses


def shard(x, feature_acts, x_hat, losses, ids):
    acc = QualityAccumulator(D_SAE)
    for part in torch.split(ids, 7):
        acc.update(x[part], feature_acts[part], x_hat[part])
        acc.add_losses(dict(zip(("clean", "spliced", "zero"), losses[part].sum(0).tolist())), len(part))
    return acc


@pytest.mark.parametrize("seed", range(20))
def test_any_split_merged_in_any_order_equals_the_single_pass(seed):
    data = synthetic_tokens()
    single = shard(*data, torch.arange(N_TOKENS))
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, N_TOKENS + 1, size=rng.integers(1, 6)))
    pool = [shard(*data, torch.as_tensor(p, dtype=torch.long)) for p in np.split(rng.permutation(N_TOKENS), cuts)]
    while len(pool) > 1:
        i, j = rng.choice(len(pool), size=2, replace=False)
        pool = [a for k, a in enumerate(pool) if k not in (i, j)] + [pool[i].merge(pool[j])]
    merged, expected = pool[0].result(), single.result()
    assert merged.reconstruction.n_tokens == expected.reconstruction.n_tokens == N_TOKENS
    assert merged.reconstruction.l0 == expected.reconstruction.l0  # an integer count over N_TOKENS
    assert merged.reconstruction.dead_fraction == expected.reconstruction.dead_fraction
    assert expected.reconstruction.dead_fraction == pytest.approx(1 / D_SAE, rel=1e-6)  # a float32 mean
    for name in ("explained_variance", "mse"):
        assert getattr(merged.reconstruction, name) == pytest.approx(getattr(expected.reconstruction, name), rel=1e-9)
    for name in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablation"):
        assert getattr(merged, name) == pytest.approx(getattr(expected, name), rel=1e-9)
    assert pool[0].median_norm() == single.median_norm()


def test_ce_losses_are_the_means_of_the_summed_token_losses_by_hand():
    acc = QualityAccumulator(D_SAE)
    acc.add_losses({"clean": 3.0, "spliced": 6.0, "zero": 30.0}, 3)
    other = QualityAccumulator(D_SAE)
    other.add_losses({"clean": 1.0, "spliced": 2.0, "zero": 10.0}, 1)
    x = torch.arange(4 * D_IN, dtype=torch.float32).reshape(4, D_IN)  # x̂ = x: explained variance 1
    acc.update(x, torch.ones(4, D_SAE), x)
    quality = acc.merge(other).result()
    assert (quality.ce_loss_clean, quality.ce_loss_spliced, quality.ce_loss_zero_ablation) == (1.0, 2.0, 10.0)
    assert quality.ce_loss_recovered == pytest.approx((10 - 2) / (10 - 1))
    assert quality.reconstruction.explained_variance == 1.0 and quality.reconstruction.l0 == D_SAE


def test_a_quality_pass_over_shards_of_rows_merges_to_the_pass_over_all_rows(tmp_path):
    folder = build_gpt2_folder(tmp_path / "m", byte_tokenizer())
    hf, tokenizer = load_hf_model(str(folder))
    model = hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, "cpu")
    sae = build_sae(d_in=32, d_sae=64, hook_name=HOOK)
    body = torch.randint(1, model.cfg.d_vocab, (10, 15))
    rows = torch.cat([torch.zeros(10, 1, dtype=torch.long), body], dim=1)
    whole = sae_quality(model, sae, HOOK, rows, batch_size=2)
    shards = [quality_pass(model, sae, HOOK, rows[a:b], batch_size=2) for a, b in ((6, 10), (0, 2), (2, 6))]
    merged = shards[0].merge(shards[1]).merge(shards[2])
    assert merged.result().reconstruction.n_tokens == 10 * 15
    for name in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablation"):
        assert getattr(merged.result(), name) == pytest.approx(getattr(whole, name), rel=1e-6)
    assert merged.result().reconstruction.explained_variance == pytest.approx(
        whole.reconstruction.explained_variance, rel=1e-6)
