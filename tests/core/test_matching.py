"""Feature matching: the sparse correlation is numpy's, a known permutation is recovered, pairs are scored."""

import numpy as np
import pytest
import torch

from core.loading import DEFAULT_PROCESSING, hooked_transformer_from_hf, load_hf_model
from core.matching import (CoactivationAccumulator, collect_coactivations, decoder_cosine, logit_weight_similarity,
                           match_features)
from core.sae_metrics import hook_activations
from factories import build_gpt2_folder, build_sae, byte_tokenizer

HOOK = "blocks.1.hook_resid_pre"


def sparse_signals(n, d, density, seed):
    """[n, d] activations: each entry fires with `density`, values uniform in [0.5, 2)."""
    generator = torch.Generator().manual_seed(seed)
    fires = torch.rand(n, d, generator=generator) < density
    return fires * (0.5 + 1.5 * torch.rand(n, d, generator=generator))


def accumulate(acts_a, acts_b, batch=37, sparse_b=False, dtype=torch.float64):
    acc = CoactivationAccumulator(acts_a.shape[1], acts_b.shape[1], dtype=dtype)
    for start in range(0, acts_a.shape[0], batch):
        b = acts_b[start:start + batch]
        acc.update(acts_a[start:start + batch], b.to_sparse() if sparse_b else b)
    return acc


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_sparse_correlation_equals_numpy_corrcoef_with_dead_and_constant_features(dtype, tolerance):
    a = sparse_signals(300, 7, 0.3, seed=1)
    b = sparse_signals(300, 5, 0.3, seed=2)
    a[:, 5] = 0  # never fires
    a[:, 6] = 2.0  # fires on every token with one value: constant
    b[:, 0] = 3 * a[:, 2]  # correlation exactly 1
    b[:, 1] = 0
    b[:, 2] = 0.5
    acc = accumulate(a, b, sparse_b=True, dtype=dtype)  # 37-token batches, B given as torch sparse
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.corrcoef(np.hstack([a.numpy(), b.numpy()]).T.astype(np.float64))[:7, 7:]
    ours = acc.result().correlation()
    assert np.isnan(expected[5]).all() and np.isnan(expected[6]).all() and np.isnan(expected[:, 1:3]).all()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance, equal_nan=True)
    assert ours[2, 0] == pytest.approx(1.0, abs=tolerance)
    np.testing.assert_array_equal(acc.n_fired_a, (a > 0).sum(0).numpy())
    assert acc.n_tokens == 300


def test_a_known_permutation_is_recovered_and_replaced_features_emerge_and_disappear():
    d, replaced = 40, [3, 17, 29]
    a = sparse_signals(5000, d, 0.05, seed=3)
    perm = torch.randperm(d, generator=torch.Generator().manual_seed(4))
    b = 2.5 * a[:, perm]  # B feature j is A feature perm[j], rescaled: correlation 1
    b[:, replaced] = sparse_signals(5000, len(replaced), 0.05, seed=5)  # new independent features
    matches = match_features(accumulate(a, b, batch=512).result(), threshold=0.8, block_rows=16)
    kept = [j for j in range(d) if j not in replaced]
    gone = perm[replaced].numpy()

    np.testing.assert_array_equal(matches.b_match[kept], perm[kept].numpy())
    np.testing.assert_allclose(matches.b_corr[kept], 1.0, atol=1e-5)
    np.testing.assert_array_equal(matches.a_match[perm[kept].numpy()], kept)
    assert list(matches.b_status[replaced]) == ["emerge"] * 3
    assert list(matches.a_status[gone]) == ["disappear"] * 3
    assert (matches.b_status[kept] == "persist").all()
    assert np.nanmax(np.abs(matches.b_corr[replaced])) < 0.1  # independent signals: |r| ~ 1/sqrt(5000)
    assert matches.counts() == {"persist_a": 37, "disappear": 3, "dead_a": 0, "rare_a": 0,
                                "persist_b": 37, "emerge": 3, "dead_b": 0, "rare_b": 0}
    assert sorted(zip(matches.pairs.a.tolist(), matches.pairs.b.tolist())) == sorted(
        (int(perm[j]), j) for j in kept)  # every pair above the threshold, and only those


def test_threshold_is_inclusive_and_a_feature_that_never_fires_is_dead_not_disappeared():
    """a = [1, 1, 0, 0], b = [1, 0, 0, 0]: cov 1/8, var 1/4 and 3/16, so r = 1/sqrt(3) = 0.577."""
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # A feature 1 never fires
    b = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    acc = accumulate(a, b, batch=3).result()
    at = match_features(acc, threshold=1 / np.sqrt(3) - 1e-6)
    assert at.a_corr[0] == pytest.approx(1 / np.sqrt(3), abs=1e-6)
    assert at.a_match[0] == 0 and at.a_status[0] == "persist" and at.b_status[0] == "persist"
    assert at.a_match[1] == -1 and np.isnan(at.a_corr[1]) and at.a_status[1] == "dead"
    assert at.a_n_fired.tolist() == [2, 0]
    above = match_features(acc, threshold=0.6)
    assert above.a_status[0] == "disappear" and above.b_status[0] == "emerge" and above.b_match[0] == 0


def test_rare_features_get_their_own_status_and_are_nobodys_partner():
    """A feature 0 fires on 3 tokens, B feature 0 copies it: a perfect correlation over 3 firings. With
    min_firings 5 both are rare, neither persists, and B feature 1 (a copy of A feature 1) still persists."""
    a = sparse_signals(400, 3, 0.1, seed=6)
    a[:, 0] = 0
    a[[5, 50, 300], 0] = torch.tensor([1.0, 2.0, 0.5])
    a[:, 2] = 0  # dead
    b = torch.stack([2 * a[:, 0], a[:, 1]], dim=1)
    acc = accumulate(a, b).result()
    loose = match_features(acc, threshold=0.8, min_firings=1)
    assert loose.a_status.tolist() == ["persist", "persist", "dead"] and loose.a_corr[0] == pytest.approx(1.0)
    strict = match_features(acc, threshold=0.8, min_firings=5)
    assert strict.a_status.tolist() == ["rare", "persist", "dead"] and strict.b_status.tolist() == ["rare", "persist"]
    assert strict.a_match[0] == -1 and np.isnan(strict.b_corr[0])
    assert list(zip(strict.pairs.a, strict.pairs.b)) == [(1, 1)]
    assert strict.counts()["rare_a"] == 1 and strict.counts()["dead_a"] == 1 and strict.counts()["persist_b"] == 1


def test_same_index_correlation_is_the_diagonal_and_the_share_tells_a_lineage_from_a_permutation():
    """B went on from A: feature j is A's j plus a growing share of fresh noise (corr(i, i) falls from 1 with j),
    features 0 and 1 of B are new, A's 9 never fires and B has 2 more features than A. corr(i, i) is the brute
    force np.corrcoef diagonal where both fired (NaN elsewhere), whatever the threshold; permuting B's features
    leaves the best matches' correlations and drops the same-index share from ~1 to chance."""
    d, n = 12, 4000
    a = sparse_signals(n, d, 0.08, seed=11)
    a[:, 9] = 0
    noise = sparse_signals(n, d + 2, 0.08, seed=12)
    mix = torch.linspace(0.0, 1.2, d + 2)
    b = torch.cat([a, torch.zeros(n, 2)], dim=1) + mix * noise
    b[:, :2] = noise[:, :2]
    matches = match_features(accumulate(a, b, batch=500).result(), threshold=0.8, block_rows=5)
    with np.errstate(invalid="ignore", divide="ignore"):
        full = np.corrcoef(np.hstack([a.numpy(), b.numpy()]).T.astype(np.float64))[:d, d:]
    expected = np.diagonal(full).copy()  # [d]: B has d + 2 features, the diagonal stops at A's last
    assert matches.same_index_corr.shape == (d,)
    assert np.isnan(matches.same_index_corr[9]) and np.isnan(expected[9])
    np.testing.assert_allclose(matches.same_index_corr, expected, atol=1e-6, equal_nan=True)
    assert np.all(np.diff(matches.same_index_corr[2:9]) < 0)  # more noise, less of itself
    assert abs(matches.same_index_corr[0]) < 0.1 and matches.same_index_corr[3] > 0.95
    emerged = np.flatnonzero(matches.b_status[:d] == "emerge")
    assert set(emerged) >= {0, 1, 11} - {9}  # at 0.8 the most drifted are "emerged" although they are A's i
    assert matches.same_index_share("b") == pytest.approx(9 / 13, abs=0.1)  # B's 12 and 13 have no own index
    assert matches.same_index_share("a") > 0.8

    perm = torch.randperm(d + 2, generator=torch.Generator().manual_seed(13))
    shuffled = match_features(accumulate(a, b[:, perm], batch=500).result(), threshold=0.8, block_rows=5)
    np.testing.assert_allclose(np.sort(shuffled.b_corr), np.sort(matches.b_corr[perm.numpy()]), atol=1e-6)
    assert shuffled.same_index_share("b") < 0.3


def test_a_planted_many_to_one_match_lists_every_partner():
    """B features 0, 1, 2 are noisy copies of A feature 4: each one's best match is A 4, and A 4 has 3 partners."""
    a = sparse_signals(3000, 6, 0.05, seed=7)
    noise = sparse_signals(3000, 3, 0.002, seed=8)
    b = torch.cat([a[:, [4]] + noise, a[:, :4]], dim=1)  # B 3..6 are A 0..3
    matches = match_features(accumulate(a, b).result(), threshold=0.8)
    assert matches.b_match[:3].tolist() == [4, 4, 4] and (matches.b_status[:3] == "persist").all()
    n_a, n_b = matches.pairs.partner_counts(6, 7)
    assert n_a.tolist() == [1, 1, 1, 1, 3, 0] and n_b.tolist() == [1] * 7
    assert matches.pairs.b[matches.pairs.a == 4].tolist() == [0, 1, 2]


def test_cross_product_larger_than_the_budget_is_refused():
    with pytest.raises(ValueError, match="max_cross_bytes"):
        CoactivationAccumulator(24_576, 24_576)  # 4.8 GB in fp64


def test_decoder_cosine_by_hand():
    W_dec_a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    W_dec_b = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    cos = decoder_cosine(W_dec_a, W_dec_b, np.array([0, 1, 1, -1]), np.array([0, 0, 1, 0]))
    np.testing.assert_allclose(cos[:3], [1 / np.sqrt(2), 1 / np.sqrt(2), -1.0], rtol=1e-6)
    assert np.isnan(cos[3])
    with pytest.raises(ValueError, match="d_in"):
        decoder_cosine(W_dec_a, torch.zeros(2, 3), np.array([0]), np.array([0]))


def test_logit_weight_similarity_equals_brute_force_and_maps_a_shared_vocabulary():
    W_dec_a, W_dec_b = torch.randn(6, 8), torch.randn(5, 8)
    W_U_a, W_U_b = torch.randn(8, 30), torch.randn(8, 30)
    a, b = np.array([0, 5, 2, 2, -1]), np.array([4, 0, 1, 3, 2])
    ours = logit_weight_similarity(W_dec_a, W_U_a, W_dec_b, W_U_b, a, b, chunk=2)
    full_a, full_b = (W_dec_a @ W_U_a).numpy(), (W_dec_b @ W_U_b).numpy()
    for k in range(4):
        x, y = full_a[a[k]], full_b[b[k]]
        assert ours[k] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), abs=1e-5)
    assert np.isnan(ours[4])
    # The same features under a model whose vocabulary is shuffled: mapped token by token, identical logits.
    vocab_perm = torch.randperm(30)
    shuffled = torch.empty_like(W_U_a)
    shuffled[:, vocab_perm] = W_U_a
    same = logit_weight_similarity(W_dec_a, W_U_a, W_dec_a, shuffled, np.arange(6), np.arange(6),
                                   shared_a=np.arange(30), shared_b=vocab_perm.numpy())
    np.testing.assert_allclose(same, 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = build_gpt2_folder(tmp_path_factory.mktemp("m") / "m", byte_tokenizer())
    hf, tokenizer = load_hf_model(str(folder))
    return hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, "cpu")


def test_collected_from_models_equals_corrcoef_of_the_encoded_activations(model):
    """Arm A: one SAE; arm B: the same SAE with its features reversed, on the same model and tokens."""
    sae = build_sae(d_in=32, d_sae=16, hook_name=HOOK)
    reversed_sae = build_sae(d_in=32, d_sae=16, hook_name=HOOK)
    with torch.no_grad():
        reversed_sae.W_enc.copy_(sae.W_enc.flip(1))
        reversed_sae.b_enc.copy_(sae.b_enc.flip(0))
    rows = torch.cat([torch.zeros(6, 1, dtype=torch.long), torch.randint(1, model.cfg.d_vocab, (6, 15))], dim=1)
    acc = collect_coactivations(model, sae, HOOK, model, reversed_sae, HOOK, rows, batch_size=4)
    acts = sae.encode(hook_activations(model, rows, HOOK)).detach().numpy().astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.corrcoef(acts.T, acts[:, ::-1].T)[:16, 16:]
    assert acc.n_tokens == 6 * 15
    np.testing.assert_allclose(acc.result().correlation(), expected, rtol=0, atol=1e-10, equal_nan=True)
    matches = match_features(acc.result())
    alive = (acts > 0).any(0) & (acts.std(0) > 0)
    assert alive.sum() >= 8  # enough live features for the check to mean something
    np.testing.assert_array_equal(matches.a_match[alive], 15 - np.flatnonzero(alive))
