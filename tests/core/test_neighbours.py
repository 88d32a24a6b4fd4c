"""Nearest features by decoder cosine: exactly the brute-force ranking of the full product (ties by id), across
chunks, within one SAE (a feature is not its own neighbour) and across two."""

import numpy as np
import pytest
import torch

from core.neighbours import TIE_MARGIN, decoder_neighbours


def brute_force(W, W_other=None, k=10):
    """Full cosine matrix in float64, each row sorted by (-cosine, id): the definition of the answer."""
    unit = lambda M: M.double() / M.double().norm(dim=1, keepdim=True)
    own = W_other is None
    cosines = (unit(W) @ unit(W if own else W_other).T).numpy()
    if own:
        np.fill_diagonal(cosines, -np.inf)
    ids = np.arange(cosines.shape[1])
    order = np.stack([np.lexsort((ids, -row))[:k] for row in cosines])
    return order, np.take_along_axis(cosines, order, 1)


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_own_sae_equals_brute_force_across_chunks(chunk_size):
    W = torch.randn(203, 12)  # 203 rows: the last chunk is short for every chunk size
    result = decoder_neighbours(W, k=10, chunk_size=chunk_size)
    ids, cosines = brute_force(W)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_allclose(result.cosine, cosines, atol=1e-6)
    assert result.ids.shape == (203, 10) and result.ids.dtype == np.int64
    assert not (result.ids == np.arange(203)[:, None]).any()  # never its own neighbour


@pytest.mark.parametrize("chunk_size", [16, 1000])
def test_other_sae_equals_brute_force(chunk_size):
    W, W_other = torch.randn(150, 12), torch.randn(97, 12)
    result = decoder_neighbours(W, W_other, k=10, chunk_size=chunk_size)
    ids, cosines = brute_force(W, W_other)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_allclose(result.cosine, cosines, atol=1e-6)


def test_planted_duplicate_is_its_twins_nearest_with_cosine_one():
    """Feature 40 is feature 7 scaled by 3 (same direction): each is the other's nearest, cosine 1; in another
    SAE that holds feature 7's direction at row 11, 11 is 7's nearest there."""
    W = torch.randn(100, 32)
    W[40] = 3 * W[7]
    own = decoder_neighbours(W, k=5, chunk_size=16)
    assert own.ids[7, 0] == 40 and own.ids[40, 0] == 7
    assert own.cosine[7, 0] == pytest.approx(1.0, abs=1e-6) and own.cosine[40, 0] == pytest.approx(1.0, abs=1e-6)
    W_other = torch.randn(60, 32)
    W_other[11] = 0.5 * W[7]
    cross = decoder_neighbours(W, W_other, k=5, chunk_size=16)
    assert cross.ids[7, 0] == 11 and cross.ids[40, 0] == 11
    assert cross.cosine[7, 0] == pytest.approx(1.0, abs=1e-6)
    assert cross.cosine[7, 1] < 0.9  # random 32-d directions are far from it


@pytest.mark.parametrize("n_tied", [3, TIE_MARGIN + 15])
def test_ties_are_ordered_by_id_even_past_the_candidate_margin(n_tied):
    """n_tied copies of one direction are exactly tied for every copy; the smallest ids come first."""
    W = torch.randn(120, 8)
    tied = torch.randperm(120)[:n_tied].sort().values
    W[tied] = torch.randn(1, 8).expand(n_tied, -1) * 2
    result = decoder_neighbours(W, k=10, chunk_size=32)
    first = int(tied[0])
    expected = [int(t) for t in tied if t != first][:10]
    assert result.ids[first, :len(expected)].tolist() == expected
    ids, _ = brute_force(W)
    np.testing.assert_array_equal(result.ids[:, :len(expected)][tied], ids[:, :len(expected)][tied])


def test_zero_rows_and_tiny_saes():
    """A zero decoder row has cosine 0 with everything; k is capped by the rows there are."""
    W = torch.randn(4, 6)
    W[2] = 0
    result = decoder_neighbours(W, k=10)
    assert result.ids.shape == (4, 3)
    assert set(result.ids[0]) == {1, 2, 3}
    assert result.cosine[1][result.ids[1] == 2] == 0.0
    assert decoder_neighbours(W[:1], k=10).ids.shape == (1, 0)
