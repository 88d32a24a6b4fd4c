"""Decoder projection: exactly the brute-force fp32 ranking (ties by token id), in fp32 and bf16 modes."""

import numpy as np
import pytest
import torch

from core.projection import BF16_ERROR, BF16_MARGIN, TIE_MARGIN, decoder_projection_topk

MODES = ["fp32", "bf16"]


def brute_force(W_dec, W_U, k):
    """Full product, each row sorted by (-value, token id): the definition of the answer."""
    logits = (W_dec.double() @ W_U.double()).numpy()
    ids = np.arange(logits.shape[1])
    top = [np.lexsort((ids, -row))[:k] for row in logits]
    bottom = [np.lexsort((ids, row))[:k] for row in logits]
    take = lambda order: (np.stack(order), np.take_along_axis(logits, np.stack(order), 1))
    return take(top), take(bottom)


def random_sae(d_sae=300, d_model=16, d_vocab=500):
    return torch.randn(d_sae, d_model), torch.randn(d_model, d_vocab) * 3


@pytest.mark.parametrize("precision", MODES)
def test_equals_brute_force_across_chunks(precision):
    W_dec, W_U = random_sae()
    result = decoder_projection_topk(W_dec, W_U, k=10, chunk_size=64, precision=precision)
    (top_ids, top_vals), (bottom_ids, bottom_vals) = brute_force(W_dec, W_U, 10)
    np.testing.assert_array_equal(result.top_ids, top_ids)
    np.testing.assert_array_equal(result.bottom_ids, bottom_ids)
    np.testing.assert_allclose(result.top_values, top_vals, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.bottom_values, bottom_vals, rtol=1e-5, atol=1e-5)
    assert result.top_ids.shape == (300, 10) and result.top_ids.dtype == np.int64


@pytest.mark.parametrize("precision", MODES)
def test_planted_feature_finds_its_tokens(precision):
    """A decoder row along token 42's unembedding (minus token 7's) has 42 on top and 7 at the bottom."""
    W_dec, W_U = random_sae(d_sae=20)
    W_U[:, 42] *= 4
    W_U[:, 7] *= 4
    W_dec[5] = W_U[:, 42] / W_U[:, 42].norm() - W_U[:, 7] / W_U[:, 7].norm()
    result = decoder_projection_topk(W_dec, W_U, k=3, precision=precision)
    assert result.top_ids[5, 0] == 42 and result.bottom_ids[5, 0] == 7
    assert result.top_values[5, 0] == pytest.approx(float(W_dec[5] @ W_U[:, 42]), rel=1e-5)


@pytest.mark.parametrize("precision", MODES)
@pytest.mark.parametrize("n_tied", [3, TIE_MARGIN + 15, BF16_MARGIN + 40])
def test_ties_are_ordered_by_token_id_even_past_the_candidate_margin(precision, n_tied):
    """n_tied identical unembedding columns give exactly equal logits; the smallest ids win."""
    W_dec, W_U = random_sae(d_sae=10, d_vocab=600)
    tied = torch.randperm(600)[:n_tied]
    W_U[:, tied] = W_U[:, :1].expand(-1, n_tied) * 5  # far above every other column for feature 0
    W_dec[0] = W_U[:, tied[0]] / W_U[:, tied[0]].norm()
    result = decoder_projection_topk(W_dec, W_U, k=10, precision=precision)
    expected = np.sort(tied.numpy())[: min(10, n_tied)]
    np.testing.assert_array_equal(result.top_ids[0, : len(expected)], expected)
    (top_ids, _), _ = brute_force(W_dec, W_U, 10)
    np.testing.assert_array_equal(result.top_ids, top_ids)


def test_bf16_error_bound_holds():
    """|fp32 − bf16| ≤ BF16_ERROR · ‖W_dec[f]‖ · ‖W_U[:, t]‖ for every entry: the proof's premise."""
    W_dec, W_U = torch.randn(512, 64), torch.randn(64, 2000) * 4
    exact = W_dec.double() @ W_U.double()
    approx = (W_dec.bfloat16() @ W_U.bfloat16()).double()
    bound = BF16_ERROR * W_dec.norm(dim=1, keepdim=True).double() * W_U.norm(dim=0, keepdim=True).double()
    assert ((exact - approx).abs() <= bound).all()
    assert (exact - approx).abs().max() > 0  # bf16 really is approximate here


def test_bf16_falls_back_to_fp32_when_it_cannot_separate(monkeypatch):
    """200 columns within 1e-2 of each other (~60 apart in value): gaps far below bf16's resolution, far above
    fp32's. Every feature needs the fp32 fallback, and the answer is still the brute-force one."""
    from core import projection

    calls = []
    full = projection._row_topk_full
    monkeypatch.setattr(projection, "_row_topk_full", lambda row, k: calls.append(1) or full(row, k))
    W_dec, W_U = random_sae(d_sae=8, d_vocab=400)
    base = W_U[:, :1] * 5
    W_U[:, 100:300] = base + 1e-2 * torch.randn(16, 200)
    W_dec[3] = (base / base.norm()).squeeze(1)
    result = decoder_projection_topk(W_dec, W_U, k=10, precision="bf16")
    (top_ids, _), (bottom_ids, _) = brute_force(W_dec, W_U, 10)
    np.testing.assert_array_equal(result.top_ids, top_ids)
    np.testing.assert_array_equal(result.bottom_ids, bottom_ids)
    assert calls  # the fp32 fallback really ran (7 of the 16 top/bottom searches here)


def test_k_larger_than_vocabulary_is_clipped():
    W_dec, W_U = random_sae(d_sae=4, d_vocab=6)
    result = decoder_projection_topk(W_dec, W_U, k=10)
    assert result.top_ids.shape == (4, 6)
    assert sorted(result.top_ids[0].tolist()) == list(range(6))
