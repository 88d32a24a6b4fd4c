"""A GPT-2-style byte-level BPE (space marker `Ġ`, `<|endoftext|>` as BOS/EOS); rows are packed by core.corpus."""

from __future__ import annotations

from pathlib import Path

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
