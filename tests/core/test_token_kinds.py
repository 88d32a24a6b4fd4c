"""Token kinds of packed rows: separators, a document's first tokens, text; checked position by position."""

import pytest
import torch

from core.token_kinds import FIRST, FIRST_TOKENS, SEPARATOR, TEXT, kind_masks, token_kinds

BOS, EOS = 0, 1


def test_kinds_of_a_hand_made_row():
    # BOS a b c d e EOS f g h i EOS EOS j
    row = torch.tensor([[BOS, 5, 6, 7, 8, 9, EOS, 5, 6, 7, 8, EOS, EOS, 5]])
    T, S, F = TEXT, SEPARATOR, FIRST
    # predicted: a  b  c  d  e  EOS f  g  h  i  EOS EOS j
    expected = [F, F, F, T, T, S, F, F, F, T, S, S, F]
    assert FIRST_TOKENS == 3
    assert token_kinds(row, [BOS, EOS]).tolist() == [expected]


def test_first_counts_a_chosen_number_of_tokens_and_bos_is_a_boundary_even_when_not_listed():
    row = torch.tensor([[BOS, 5, 6, EOS, 7, 8, 9]])
    assert token_kinds(row, [EOS], first=1).tolist() == [[FIRST, TEXT, SEPARATOR, FIRST, TEXT, TEXT]]
    assert token_kinds(row, [EOS], first=0).tolist() == [[TEXT, TEXT, SEPARATOR, TEXT, TEXT, TEXT]]


def test_masks_partition_the_predicted_tokens():
    rows = torch.randint(0, 6, (4, 20))
    rows[:, 0] = BOS
    masks = kind_masks(rows, [BOS, EOS])
    parts = masks["text"].int() + masks["separator"].int() + masks["first"].int()
    assert masks["all"].shape == (4, 19) and bool((parts == 1).all())
    # brute force: a separator is exactly a predicted BOS / EOS
    assert torch.equal(masks["separator"], (rows[:, 1:] == BOS) | (rows[:, 1:] == EOS))


def test_a_row_too_short_to_predict_anything_is_refused():
    with pytest.raises(ValueError, match="T >= 2"):
        token_kinds(torch.tensor([[BOS]]), [BOS])
