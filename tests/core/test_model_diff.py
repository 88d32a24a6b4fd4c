"""Model diff: activation similarity by hand and on tiny models, SAE transfer vs sae_quality, outliers, densities."""

import copy

import numpy as np
import pytest
import torch

from core.loading import DEFAULT_PROCESSING, hooked_transformer_from_hf, load_hf_model
from core.model_diff import (COSINE_EDGES, DISTANCE_EDGES, ActivationSimilarityAccumulator, activation_similarity,
                             log_density_correlation, sae_transfer)
from core.sae_metrics import hook_activations, reconstruction_stats, sae_quality
from factories import build_gpt2_folder, build_sae, byte_tokenizer, perturb_gpt2_folder

HOOK = "blocks.1.hook_resid_pre"
N, T = 6, 16


def hooked(folder):
    hf, tokenizer = load_hf_model(str(folder))
    return hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, "cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = build_gpt2_folder(root / "base", byte_tokenizer())
    return hooked(base), hooked(perturb_gpt2_folder(base, root / "tuned", scale=0.05))


def token_rows(d_vocab, low=1):
    body = torch.randint(low, d_vocab, (N, T - 1))
    return torch.cat([torch.zeros(N, 1, dtype=torch.long), body], dim=1)  # id 0 is <|endoftext|>: BOS only


def test_similarity_by_hand():
    """Batch 1: position 1 the same vector (cos 1, distance 0), position 2 (0, 2) vs (0, -2): cos -1, distance 4."""
    acc = ActivationSimilarityAccumulator(n_positions=2)
    acc.update(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]), torch.tensor([[[1.0, 0.0], [0.0, -2.0]]]))
    # Batch 2: position 1 (3, 4) vs (4, 3): cos 24/25, distance √2; position 2 the same vector.
    acc.update(torch.tensor([[[3.0, 4.0], [1.0, 1.0]]]), torch.tensor([[[4.0, 3.0], [1.0, 1.0]]]))
    result = acc.result()
    assert result.n_tokens == 4
    np.testing.assert_array_equal(result.position, [1, 2])
    np.testing.assert_allclose(result.mean_cosine_by_position, [(1 + 0.96) / 2, (-1 + 1) / 2], atol=1e-12)
    np.testing.assert_allclose(result.mean_distance_by_position, [np.sqrt(2) / 2, 4 / 2])
    assert result.mean_cosine == pytest.approx((1 - 1 + 0.96 + 1) / 4)
    assert result.mean_distance == pytest.approx((0 + 4 + np.sqrt(2) + 0) / 4)
    expected_cos, _ = np.histogram([1, -1, 0.96, 1], bins=COSINE_EDGES)
    np.testing.assert_array_equal(result.cosine_hist, expected_cos)
    expected_dist, _ = np.histogram([DISTANCE_EDGES[0], 4, np.sqrt(2), DISTANCE_EDGES[0]], bins=DISTANCE_EDGES)
    np.testing.assert_array_equal(result.distance_hist, expected_dist)  # distance 0 lands in the first bin


def test_a_model_compared_with_itself_has_cosine_one_and_distance_zero(models):
    base, _ = models
    result = activation_similarity(base, base, HOOK, token_rows(base.cfg.d_vocab), batch_size=4)
    assert result.n_tokens == N * (T - 1)
    assert result.mean_cosine == pytest.approx(1.0, abs=1e-12) and result.mean_distance == 0.0
    np.testing.assert_array_equal(result.position, np.arange(1, T))
    assert result.cosine_hist[-1] == result.distance_hist[0] == N * (T - 1)
    np.testing.assert_allclose(result.mean_cosine_by_position, 1.0, atol=1e-12)


def test_a_perturbed_model_equals_brute_force_on_the_hook_activations(models):
    base, tuned = models
    rows = token_rows(base.cfg.d_vocab)
    result = activation_similarity(base, tuned, HOOK, rows, batch_size=4)
    a = hook_activations(base, rows, HOOK).double().reshape(N, T - 1, -1)
    b = hook_activations(tuned, rows, HOOK).double().reshape(N, T - 1, -1)
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    distance = (a - b).norm(dim=-1)
    assert 0 < result.mean_cosine < 1 and result.mean_distance > 0
    assert result.mean_cosine == pytest.approx(cosine.mean().item(), rel=1e-6)
    assert result.mean_distance == pytest.approx(distance.mean().item(), rel=1e-6)
    np.testing.assert_allclose(result.mean_distance_by_position, distance.mean(0).numpy(), rtol=1e-6)
    assert result.cosine_hist.sum() == result.distance_hist.sum() == N * (T - 1)


@pytest.mark.parametrize("outlier_factor", [None, 10.0])
def test_transfer_onto_its_own_model_reproduces_sae_quality(models, outlier_factor):
    base, _ = models
    sae = build_sae(d_in=32, d_sae=64, hook_name=HOOK)
    rows = token_rows(base.cfg.d_vocab)
    transfer = sae_transfer(base, sae, HOOK, rows, outlier_factor=outlier_factor, batch_size=4)
    own = sae_quality(base, sae, HOOK, rows, batch_size=4)
    assert transfer.n_outliers == 0 and transfer.n_positions == N * (T - 1)
    for name in ("ce_loss_clean", "ce_loss_spliced", "ce_loss_zero_ablation"):
        assert getattr(transfer.quality, name) == pytest.approx(getattr(own, name), rel=1e-5)
    for name in ("n_tokens", "l0", "explained_variance", "mse", "dead_fraction"):
        assert getattr(transfer.quality.reconstruction, name) == pytest.approx(getattr(own.reconstruction, name),
                                                                               rel=1e-5, abs=1e-7)
    fired = (sae.encode(hook_activations(base, rows, HOOK)) > 0).double().mean(0).numpy()
    np.testing.assert_allclose(transfer.density, fired)


def test_a_planted_huge_norm_position_is_filtered_and_counted(models):
    """Token 5's embedding × 1000, placed once at row 2, position 5: the only outlier."""
    model = copy.deepcopy(models[0])
    with torch.no_grad():
        model.W_E[5] *= 1000
    rows = token_rows(model.cfg.d_vocab, low=6)
    rows[2, 5] = 5
    sae = build_sae(d_in=32, d_sae=64, hook_name=HOOK)
    filtered = sae_transfer(model, sae, HOOK, rows, batch_size=4)
    unfiltered = sae_transfer(model, sae, HOOK, rows, outlier_factor=None, batch_size=4)
    assert filtered.n_outliers == 1 and filtered.outlier_fraction == pytest.approx(1 / (N * (T - 1)))
    assert unfiltered.n_outliers == 0 and unfiltered.outlier_threshold == float("inf")
    acts = hook_activations(model, rows, HOOK)
    keep = torch.ones(acts.shape[0], dtype=torch.bool)
    keep[2 * (T - 1) + 4] = False  # BOS-less coordinates: position 5 is index 4 of row 2
    assert acts[~keep].norm() > 100 * acts[keep].norm(dim=1).median()
    expected = reconstruction_stats(sae, acts[keep])
    assert filtered.quality.reconstruction.n_tokens == N * (T - 1) - 1
    for name in ("l0", "explained_variance", "mse", "dead_fraction"):
        assert getattr(filtered.quality.reconstruction, name) == pytest.approx(getattr(expected, name), rel=1e-5)
    # One position in 90 holds most of the variance: with it, explained variance says something else entirely.
    assert abs(unfiltered.quality.reconstruction.explained_variance - expected.explained_variance) > 0.1
    assert filtered.quality.ce_loss_clean == unfiltered.quality.ce_loss_clean


def test_log_density_correlation_by_hand():
    """Features 0-2 fired on both: log10 densities (-1, -2, -3) vs (-2, -3, -4), r = 1; 3-5 are left out."""
    a = np.array([1e-1, 1e-2, 1e-3, 0.0, 1e-4, 0.0])
    b = np.array([1e-2, 1e-3, 1e-4, 1e-3, 0.0, 0.0])
    result = log_density_correlation(a, b)
    assert result.pearson == pytest.approx(1.0)
    counts = (result.n_features, result.n_dead_a, result.n_dead_b, result.n_dead_both, result.n_excluded)
    assert counts == (3, 2, 2, 1, 3)
    assert log_density_correlation(a[:3], b[2::-1]).pearson == pytest.approx(-1.0)  # (-1, -2, -3) vs (-4, -3, -2)
    assert np.isnan(log_density_correlation(a[:1], b[:1]).pearson)
    with pytest.raises(ValueError):
        log_density_correlation(a, b[:3])
