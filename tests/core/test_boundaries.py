"""Boundary positions of packed rows, checked by hand: over the BOS-less positions, those that predict a separator
or one of a document's first `first_tokens` tokens (core.token_kinds), the last one as if the row went on with text;
the tokenizer's special ids are its BOS, EOS and the others."""

import torch

from core.boundaries import boundary_mask, special_token_ids
from factories import byte_tokenizer

ROWS = torch.tensor([[0, 5, 6, 7, 8, 0, 9, 4, 3, 2],   # BOS, a document's end at 5, the next one from 6
                     [0, 1, 2, 3, 0, 0, 4, 5, 6, 7],   # an empty document between the separators at 4 and 5
                     [0, 5, 6, 7, 8, 6, 7, 8, 0, 9]])  # a document starts at the row's end
T, F = True, False


def test_positions_that_predict_a_separator_or_a_documents_first_tokens():
    # row 0: position 1 predicts the 2nd token after BOS; 4 the separator; 5 and 6 the next document's first two
    assert boundary_mask(ROWS, {0}, 2).tolist() == [[T, F, F, T, T, T, F, F, F],
                                                    [T, F, T, T, T, T, F, F, F],
                                                    [T, F, F, F, F, F, T, T, T]]


def test_without_first_tokens_only_the_positions_that_predict_a_separator():
    assert boundary_mask(ROWS, {0}, 0).tolist() == [[F, F, F, T, F, F, F, F, F],
                                                    [F, F, T, T, F, F, F, F, F],
                                                    [F, F, F, F, F, F, T, F, F]]


def test_the_last_position_predicts_text_past_the_row():
    # row 2 with one first token: the 9 after the separator is first, the token past the row (2nd after it) is text
    assert boundary_mask(ROWS[2:], {0}, 1).tolist() == [[F, F, F, F, F, F, T, T, F]]


def test_every_special_id_separates_and_without_any_only_bos_starts_a_document():
    # 9 (row 0, position 6) also special: the positions that predict it and the 2 tokens after it
    assert boundary_mask(ROWS[:1], (0, 9), 2).tolist() == [[T, F, F, T, T, T, T, F, F]]
    assert not boundary_mask(ROWS, (), 0).any()
    assert boundary_mask(ROWS, (), 2)[:, 0].all() and boundary_mask(ROWS, (), 2)[:, 1:].sum() == 0
    assert boundary_mask(ROWS, {0}, 50).all()  # first_tokens past the row's end


def test_special_ids_are_the_tokenizers_bos_eos_and_other_special_tokens():
    tokenizer = byte_tokenizer()
    assert special_token_ids(tokenizer) == (tokenizer.eos_token_id,) == (0,)  # <|endoftext|> is BOS and EOS
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    opener, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert special_token_ids(tokenizer) == (0, opener, end)
