"""Decoder projection: exactly the brute-force fp32 ranking (ties by token id), in fp32 and bf16 modes, across
feature chunks and (fp32) vocabulary blocks."""

import numpy as np
import pytest
import torch

from core import projection
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


@pytest.mark.parametrize("block", [7, 16, 64])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_blocks_merge_to_the_brute_force_answer(monkeypatch, block, k):
    """Vocabulary of 100 in blocks of 7 (7 groups: all chosen), 16 and 64 (only the k + TIE_MARGIN best groups
    where k + TIE_MARGIN < block), the last block zero-padded."""
    monkeypatch.setattr(projection, "VOCAB_BLOCK", block)
    calls = []
    monkeypatch.setattr(projection, "_row_topk_full", lambda row, k: calls.append(1))
    W_dec, W_U = random_sae(d_sae=40, d_vocab=100)
    result = decoder_projection_topk(W_dec, W_U, k=k, chunk_size=16, precision="fp32")
    assert not calls  # random values do not tie: the blocks alone must settle every feature
    (top_ids, top_vals), (bottom_ids, bottom_vals) = brute_force(W_dec, W_U, k)
    np.testing.assert_array_equal(result.top_ids, top_ids)
    np.testing.assert_array_equal(result.bottom_ids, bottom_ids)
    np.testing.assert_allclose(result.top_values, top_vals, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.bottom_values, bottom_vals, rtol=1e-5, atol=1e-5)


def tied_sae(tied: list[int], d_vocab: int = 100):
    """Feature 0's top and feature 1's bottom are the exactly equal logits of the `tied` columns (far from the rest)."""
    W_dec, W_U = random_sae(d_sae=6, d_vocab=d_vocab)
    W_U[:, tied] = W_U[:, :1].expand(-1, len(tied)) * 5
    W_dec[0] = W_U[:, tied[0]] / W_U[:, tied[0]].norm()
    W_dec[1] = -W_dec[0]
    return W_dec, W_U


def test_tie_at_the_kth_place_straddling_two_blocks_is_ordered_by_token_id(monkeypatch):
    """Blocks of 16: tied tokens 14, 15 | 16, 17, in four of the chosen groups. Top-3 is 14, 15, 16: equal values
    from two blocks must be ordered by global token id, not by block, group or block-local id."""
    monkeypatch.setattr(projection, "VOCAB_BLOCK", 16)
    W_dec, W_U = tied_sae([17, 16, 15, 14])
    result = decoder_projection_topk(W_dec, W_U, k=3, precision="fp32")
    assert result.top_ids[0].tolist() == [14, 15, 16] and result.bottom_ids[1].tolist() == [14, 15, 16]
    (top_ids, _), (bottom_ids, _) = brute_force(W_dec, W_U, 3)
    np.testing.assert_array_equal(result.top_ids, top_ids)
    np.testing.assert_array_equal(result.bottom_ids, bottom_ids)


def test_tie_running_past_the_chosen_groups_is_settled_on_the_full_row(monkeypatch):
    """Blocks of 16, k = 3: token 15 and all 16 tokens of block 1 tie, so all 16 groups have the same best and
    which k + TIE_MARGIN of them are chosen is arbitrary. The answer must still be 15, 16, 17."""
    monkeypatch.setattr(projection, "VOCAB_BLOCK", 16)
    calls = []
    full = projection._row_topk_full
    monkeypatch.setattr(projection, "_row_topk_full", lambda row, k: calls.append(1) or full(row, k))
    assert 16 > 3 + TIE_MARGIN  # the premise: not every group holding a tied token is chosen
    W_dec, W_U = tied_sae([31 - i for i in range(16)] + [15])
    result = decoder_projection_topk(W_dec, W_U, k=3, precision="fp32")
    assert result.top_ids[0].tolist() == [15, 16, 17] and result.bottom_ids[1].tolist() == [15, 16, 17]
    (top_ids, _), (bottom_ids, _) = brute_force(W_dec, W_U, 3)
    np.testing.assert_array_equal(result.top_ids, top_ids)
    np.testing.assert_array_equal(result.bottom_ids, bottom_ids)
    assert len(calls) >= 2  # at least feature 0's top and feature 1's bottom (block 1 ties for every feature)
