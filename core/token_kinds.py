"""What kind of token each predicted position of a packed row is: a document separator, one of a document's first
few tokens, or text.

Rows are `[BOS] + stream of "doc <eos> doc <eos> …"` (core.corpus.pack_rows). A model learns the separators and the
tokens right after one (no context yet) quickly and from any corpus of short documents, so a perplexity or a
divergence pooled over all tokens mostly measures where documents end. Splitting by kind keeps "the text itself is
predicted better" apart from that (issue 22: on SmolLM2 the separators' perplexity fell 94%, the text's 23%).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# A document's first predicted tokens (after BOS or after a separator) count as `first`: with one or two tokens of
# context every model guesses, and the fine-tune's gain there is the corpus's opening words ("A", "An", "Abnormal").
FIRST_TOKENS = 3
TEXT, SEPARATOR, FIRST = 0, 1, 2
KINDS = {"text": TEXT, "separator": SEPARATOR, "first": FIRST}


def token_kinds(rows: torch.Tensor, special_ids: Iterable[int], first: int = FIRST_TOKENS) -> torch.Tensor:
    """The kind (TEXT / SEPARATOR / FIRST) of each predicted token of `rows` [n, T] (int ids): [n, T - 1], where
    entry t is the kind of `rows[:, t + 1]`, the token predicted from position t.

    SEPARATOR: the token is one of `special_ids` (BOS, EOS, …). FIRST: not special, and at most `first` positions
    after the last special token before it (position 0, BOS, counts as one). TEXT: everything else."""
    if rows.ndim != 2 or rows.shape[1] < 2:
        raise ValueError(f"rows must be [n, T] with T >= 2, got {tuple(rows.shape)}")
    special = torch.isin(rows, torch.as_tensor(sorted(set(special_ids)), dtype=rows.dtype, device=rows.device))
    special[:, 0] = True  # a row starts with BOS: the tokens after it have no document context either
    positions = torch.arange(rows.shape[1], device=rows.device).expand_as(rows)
    # Position of the last special token at or before each position (cumulative max of the special positions).
    last_special = torch.where(special, positions, torch.zeros_like(positions)).cummax(dim=1).values
    since = positions - last_special  # 0 on a special token, 1 right after it, …
    kinds = torch.full_like(rows, TEXT)
    kinds[(since >= 1) & (since <= first)] = FIRST
    kinds[special] = SEPARATOR
    return kinds[:, 1:]


def kind_masks(rows: torch.Tensor, special_ids: Iterable[int], first: int = FIRST_TOKENS) -> dict[str, torch.Tensor]:
    """{"all", "text", "separator", "first"} -> bool mask [n, T - 1] over the predicted tokens of `rows` [n, T]."""
    kinds = token_kinds(rows, special_ids, first)
    return {"all": torch.ones_like(kinds, dtype=torch.bool), **{name: kinds == k for name, k in KINDS.items()}}
