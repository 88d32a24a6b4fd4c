"""A GPT-2-style byte-level BPE (space marker `Ġ`, `<|endoftext|>` as BOS/EOS) and token-row packing."""

from __future__ import annotations

from pathlib import Path

import torch

ENDOFTEXT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> object:
    """Train a byte-level BPE on `texts` (in order) and wrap it as a `GPT2TokenizerFast`.

    Training is deterministic for the same texts in the same order (checked by the determinism test).
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[ENDOFTEXT],
                            show_progress=False)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=ENDOFTEXT, eos_token=ENDOFTEXT,
                                  unk_token=ENDOFTEXT, model_max_length=1024)
    return tokenizer


def save_tokenizer(tokenizer: object, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))


def pack_rows(texts: list[str], tokenizer: object, context_size: int, max_rows: int | None = None) -> torch.Tensor:
    """Token rows `[n_rows, context_size]`: each row is BOS + the next `context_size - 1` tokens of the stream
    "doc <eos> doc <eos> …", the layout GPT-2 and its SAEs were trained with. The remainder is dropped."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    body = context_size - 1
    for start in range(0, len(texts), 2000):  # chunks, so we stop encoding once there are enough rows
        for ids in tokenizer(texts[start:start + 2000], add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        if max_rows is not None and len(stream) >= max_rows * body:
            break
    n_rows = len(stream) // body
    if max_rows is not None:
        n_rows = min(n_rows, max_rows)
    body_tokens = torch.tensor(stream[: n_rows * body], dtype=torch.long).view(n_rows, body)
    bos_column = torch.full((n_rows, 1), tokenizer.bos_token_id, dtype=torch.long)
    return torch.cat([bos_column, body_tokens], dim=1)
