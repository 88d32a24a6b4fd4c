"""Document boundaries among the positions a pair's divergence scores (core.divergence): the positions whose
next-token prediction is about where a document ends or starts rather than about the text itself.

On SmolLM2's medical fine-tune, 91% of the top 1% most divergent tokens were separators or a document's first
tokens: the fine-tune learned where documents end. The divergence ranks text positions only and reports the
boundary positions apart. A position is a boundary when the token it predicts is not text by core.token_kinds (a
separator, or one of a document's first tokens), the same split the Overview's perplexities use.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor

from core.token_kinds import TEXT, token_kinds


def special_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids that separate documents in a row: the tokenizer's BOS, EOS and every other special token."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, *getattr(tokenizer, "all_special_ids", ())}
    return tuple(sorted(i for i in ids if i is not None))


def boundary_mask(tokens: Tensor, special_ids: Collection[int], first_tokens: int) -> Tensor:
    """Boundary positions of token rows [n, T] (BOS first) -> bool [n, T - 1] over the BOS-less positions.

    Entry i is row position i + 1, which predicts the token at row position i + 2: a boundary when that token is
    one of `special_ids` (a separator) or one of the `first_tokens` tokens after BOS or a separator. The row's last
    position predicts a token outside the row, taken as text: a boundary only when it would be a document's first
    token (a separator at most `first_tokens - 1` positions back)."""
    outside = torch.full_like(tokens[:, :1], -1)  # no id is -1: the token after the row is not special
    return token_kinds(torch.cat([tokens, outside], dim=1), special_ids, first_tokens)[:, 1:] != TEXT
