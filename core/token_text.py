"""The text of every token id of a vocabulary, and which token ids are whole words of a word list.

Kept beside core.words (the word rule) because every stage that shows or counts tokens reads them this way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.words import (SENTENCEPIECE_SPACE_MARKER, byte_level_alphabet, byte_text, normalize_token,
                        sentencepiece_text, space_marker)


def vocabulary_strings(tokenizer: Any, d_vocab: int) -> tuple[list[str], np.ndarray]:
    """Per token id: the tokenizer's own spelling ("Ġheart", for the word rule) and its text (" heart", to show).

    A byte-level token that is not whole UTF-8 characters shows its bytes as `<0x8F>` (core.words.byte_text),
    never "\ufffd", so two byte tokens never read alike. Byte-level BPE (GPT-2) tokens are decoded through the
    byte table directly, 50x faster than 50k decode calls; a sample is checked against `tokenizer.decode`.
    SentencePiece pieces are read as `sentencepiece_text`, so that words keep their leading space (decoding one
    piece alone drops it). Any other tokenizer takes the slow path, where a token that decodes to "\ufffd" shows
    its own spelling."""
    known = min(d_vocab, len(tokenizer))
    raw = [t or "" for t in tokenizer.convert_ids_to_tokens(list(range(known)))] + [""] * (d_vocab - known)
    if space_marker(raw[:known]) == SENTENCEPIECE_SPACE_MARKER:  # decode([i]) would drop each leading space
        return raw, np.array([sentencepiece_text(token) for token in raw], dtype=object)
    data = _byte_level_bytes(raw[:known])
    sample = range(0, known, max(1, known // 200))
    if data is not None and all(data[i].decode("utf-8", errors="replace") == tokenizer.decode([i]) for i in sample):
        text = [byte_text(token) for token in data]
    else:
        decoded = tokenizer.batch_decode([[i] for i in range(known)])
        text = [t if "\ufffd" not in t or not r else r for t, r in zip(decoded, raw)]
    return raw, np.array(list(text) + [""] * (d_vocab - known), dtype=object)


def _byte_level_bytes(tokens: list[str]) -> list[bytes] | None:
    byte_of = byte_level_alphabet()
    try:
        return [bytes(byte_of[c] for c in token) for token in tokens]
    except KeyError:
        return None


def medical_token_mask(raw_tokens: list[str], medical_words: frozenset[str]) -> torch.Tensor:
    """[d_vocab] bool: the token is a whole word of the medical vocabulary (after the valid-word rule)."""
    marker = space_marker(raw_tokens)
    return torch.tensor([normalize_token(t, marker) in medical_words for t in raw_tokens], dtype=torch.bool)
