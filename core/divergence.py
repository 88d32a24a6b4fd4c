"""Where two models' next-token predictions part, over a corpus sample: per position KL(p_a ‖ p_b) and the change
in log-probability of the token that follows, and the SAE features that live on the most divergent tokens.

Positions are those Inspect shows (core.inspect): row position 0 is BOS and left out; token i (BOS-less) is row
position i + 1, and its next-token distribution is the model's after reading positions 0..i + 1, so its KL concerns
the token at row position i + 2 (the row's last token has a KL but no following token: its Δ log p is NaN).

Boundary positions (core.boundaries: those that predict a separator or a document's first tokens) are reported
apart and ranked nowhere: on SmolLM2 they were 91% of the most divergent tokens, which then showed where
documents end rather than where the text is predicted differently. Every ranking below is over text positions.

What is kept, with memory bounded by the sample's rows, never by rows × positions × vocabulary:
- per row: mean KL and max KL over its text positions and where the max is (one small record per row; 10M tokens
  are ~80k rows of 128);
- the top `n_contexts` rows by that mean, with every token's KL, Δ log p and kind (text or boundary: a running
  top-N);
- the divergent tokens: the top `divergent_share` of text positions by KL (a running top-K with each position's
  firing features, sparse), never a position whose KL is below KL_FLOOR (float noise: a model against an
  identical copy has no divergent tokens, so no enrichment);
- per feature of each arm: summed activation and firing count over every text position, so "elsewhere" (the other
  text positions) is the total minus the divergent tokens' part;
- the boundary apart: KL summed over text and over boundary positions, and the top `divergent_share` of all
  positions by KL with each one's kind (how many of the most divergent tokens are boundaries).
Ties rank by (corpus row, position), lower first, so any split of the rows into batches or shards gives the
same top sets (`merge`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from core.boundaries import boundary_mask
from core.chunked_logits import Chunks, kl_and_logprobs, tensor_chunks, unembed_chunks, vocab_chunk
from core.hook_reads import residual_and_features

KL_FLOOR = 1e-6  # nats: below this a position is not divergent (identical float32 models give ~1e-8)


def next_token_divergence(logits_a: Tensor, logits_b: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """KL(p_a ‖ p_b) [B, T - 1] of the next-token distributions after each BOS-less position, in nats (clamped at 0),
    and log p_b − log p_a of the token that follows [B, T - 1] (NaN on the last position). logits [B, T, d_vocab],
    tokens [B, T] with BOS first. Read in vocabulary chunks (core.chunked_logits)."""
    flat_a, flat_b = (logits[:, 1:].reshape(-1, logits.shape[-1]) for logits in (logits_a, logits_b))
    chunk = vocab_chunk(flat_a.shape[0], flat_a.shape[1])
    return _divergence_of(tensor_chunks(flat_a, chunk), tensor_chunks(flat_b.to(flat_a.device), chunk), tokens,
                          flat_a.device)


def residual_divergence(model_a: Any, residual_a: Tensor, model_b: Any, residual_b: Tensor,
                        tokens: Tensor) -> tuple[Tensor, Tensor]:
    """next_token_divergence from each model's normalised final residual [B, T, d_model] (core.hook_reads
    .final_residual) through its unembedding a vocabulary chunk at a time: no [B, T, d_vocab] tensor is made."""
    flat_a, flat_b = (residual[:, 1:].reshape(-1, residual.shape[-1]) for residual in (residual_a, residual_b))
    chunk = vocab_chunk(flat_a.shape[0], model_a.cfg.d_vocab)
    return _divergence_of(unembed_chunks(model_a, flat_a, chunk), unembed_chunks(model_b, flat_b, chunk), tokens,
                          flat_a.device)


def _divergence_of(chunks_a: Chunks, chunks_b: Chunks, tokens: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """KL and Δ log p [B, T - 1] (float32) from chunks of the [B × (T - 1), d_vocab] logits after BOS."""
    b, t = tokens.shape[0], tokens.shape[1] - 1
    following = torch.cat([tokens[:, 2:], tokens[:, -1:]], dim=1).to(device).reshape(-1)  # the last: a placeholder
    kl, log_a, log_b = kl_and_logprobs(chunks_a, chunks_b, following)
    change = (log_b - log_a).float().reshape(b, t)
    change[:, -1] = float("nan")
    return kl.float().reshape(b, t), change


@dataclass(frozen=True)
class DivergentContexts:
    """The top rows by mean KL over their text positions, best first. Arrays [n] or [n, T - 1] over BOS-less
    positions; token_ids [n, T - 1]."""

    row: np.ndarray  # int64 corpus row
    mean_kl: np.ndarray  # over the row's text positions (NaN for a row of boundaries only)
    token_ids: np.ndarray
    kl: np.ndarray  # float32, every position
    logprob_change: np.ndarray  # float32, NaN on the last position
    boundary: np.ndarray  # bool: the position is a boundary (core.boundaries), left out of mean_kl and the max

    def text_max(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's largest KL over its text positions [n] (float64, NaN when it has none) and where it is [n]."""
        return _text_max(self.kl.astype(np.float64), self.boundary)


@dataclass(frozen=True)
class Enrichment:
    """One arm's features on the divergent tokens against every other text position (float64 / int64, [d_sae])."""

    mean_divergent: np.ndarray  # mean activation over the divergent tokens (NaN when there are none)
    mean_elsewhere: np.ndarray  # over the other text positions
    fired_divergent: np.ndarray
    fired_elsewhere: np.ndarray


@dataclass(frozen=True)
class BoundaryFigures:
    """The boundary positions apart: how many, their KL against the text's, and their share of the most divergent
    tokens over all positions (what a ranking that did not leave them out would have shown)."""

    n_text: int
    n_boundary: int
    sum_kl_text: float  # nats
    sum_kl_boundary: float
    n_top: int  # positions in the top `share` of all positions by KL (above KL_FLOOR)
    n_top_boundary: int  # of those, boundaries

    @property
    def mean_kl_text(self) -> float:
        return self.sum_kl_text / self.n_text if self.n_text else float("nan")

    @property
    def mean_kl_boundary(self) -> float:
        return self.sum_kl_boundary / self.n_boundary if self.n_boundary else float("nan")

    @property
    def boundary_share(self) -> float:
        """Boundary positions / all positions."""
        total = self.n_text + self.n_boundary
        return self.n_boundary / total if total else float("nan")

    @property
    def boundary_share_of_top(self) -> float:
        """Boundaries among the most divergent positions of all (NaN when none passes KL_FLOOR)."""
        return self.n_top_boundary / self.n_top if self.n_top else float("nan")


@dataclass(frozen=True)
class Divergence:
    n_positions: int
    row: np.ndarray  # int64 [n_rows], ascending: every row of the sample
    row_mean_kl: np.ndarray  # over the row's text positions (NaN: none)
    row_max_kl: np.ndarray  # over the row's text positions (NaN: none)
    row_max_index: np.ndarray  # int64: BOS-less token index of the row's max text KL (0: none)
    contexts: DivergentContexts
    n_divergent: int  # text tokens in the divergent set (≤ ceil(share × text positions); fewer below KL_FLOOR)
    divergent_threshold: float  # the smallest KL in that set (NaN when empty)
    enrichment: tuple[Enrichment, Enrichment]  # arm a's SAE on model a, arm b's on model b
    boundaries: BoundaryFigures

    @property
    def mean_kl(self) -> float:
        """Over every position, text and boundary."""
        b = self.boundaries
        return (b.sum_kl_text + b.sum_kl_boundary) / self.n_positions if self.n_positions else float("nan")


def _text_max(kl: np.ndarray, boundary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of kl [n, m] (float64): the largest KL over non-boundary positions (NaN: none) and its index (0: none)."""
    masked = np.where(boundary, -np.inf, kl)
    index = masked.argmax(1) if masked.shape[1] else np.zeros(len(masked), np.int64)
    top = masked[np.arange(len(masked)), index] if masked.shape[1] else np.full(len(masked), -np.inf)
    return np.where(np.isfinite(top), top, np.nan), index.astype(np.int64)


def _top(order_keys: tuple[np.ndarray, ...], k: int) -> np.ndarray:
    """Indices of the k best under np.lexsort's keys (last key primary), best first."""
    return np.lexsort(order_keys)[:k]


class DivergenceAccumulator:
    """Running state of the pass (core.accumulator.Accumulator): update per batch, merge shards, result.
    n_divergent: size of the divergent set of text tokens; n_top: of the top set over all positions (the boundary
    share), by default the same."""

    def __init__(self, n_contexts: int, n_divergent: int, d_sae: tuple[int, int], n_top: int | None = None) -> None:
        self.n_contexts, self.n_divergent, self.d_sae = n_contexts, n_divergent, d_sae
        self.n_top = n_divergent if n_top is None else n_top
        self.rows: list[np.ndarray] = []  # per batch: [B, 4] (row, mean, max, argmax) as float64, over text
        self.ctx = {"row": np.zeros(0, np.int64), "mean_kl": np.zeros(0), "token_ids": None, "kl": None,
                    "logprob_change": None, "boundary": None}
        # divergent candidates: key (kl, row, pos) and their firings as (owner, arm, feature, act) entries
        self.div_kl, self.div_row, self.div_pos = np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.entries = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)) for _ in range(2)]
        # the top positions over all of them, with each one's kind
        self.top = {"kl": np.zeros(0), "row": np.zeros(0, np.int64), "pos": np.zeros(0, np.int64),
                    "boundary": np.zeros(0, bool)}
        self.sum_act = [np.zeros(d) for d in d_sae]
        self.fired = [np.zeros(d, np.int64) for d in d_sae]
        self.n_positions = 0
        self.kl_sums = np.zeros(4)  # KL over text, text positions, KL over boundaries, boundary positions

    @torch.no_grad()
    def update(self, row: np.ndarray, tokens: Tensor, kl: Tensor, change: Tensor, acts_a: Tensor,
               acts_b: Tensor, boundary: Tensor | None = None) -> None:
        """row [B] corpus rows; tokens [B, T] (BOS first); kl, change [B, T - 1]; acts_a, acts_b [B, T - 1, d_sae];
        boundary [B, T - 1] bool (core.boundaries over the BOS-less positions), None: no boundary."""
        row = np.asarray(row, np.int64)
        kl_np = kl.double().cpu().numpy()
        bound = np.zeros(kl_np.shape, bool) if boundary is None else boundary.cpu().numpy().astype(bool)
        text = ~bound
        self.n_positions += kl_np.size
        self.kl_sums += [kl_np[text].sum(), text.sum(), kl_np[bound].sum(), bound.sum()]
        n_text = text.sum(1)
        mean = np.where(n_text > 0, np.where(text, kl_np, 0.0).sum(1) / np.maximum(n_text, 1), np.nan)
        top, index = _text_max(kl_np, bound)
        self.rows.append(np.stack([row, mean, top, index], 1))
        self._offer_contexts(row, tokens[:, 1:].cpu().numpy(), kl_np, change.float().cpu().numpy(), bound, mean)
        for arm, acts in enumerate((acts_a, acts_b)):
            on_text = torch.as_tensor(text, device=acts.device)[..., None]
            self.sum_act[arm] += (acts * on_text).sum((0, 1), dtype=torch.float64).cpu().numpy()
            self.fired[arm] += ((acts > 0) & on_text).sum((0, 1)).cpu().numpy()
        b, p = np.nonzero(kl_np > KL_FLOOR)
        keep = _top((p, row[b], -kl_np[b, p]), self.n_top)  # the batch's own best first: bounded work
        self._offer_top(kl_np[b[keep], p[keep]], row[b[keep]], p[keep].astype(np.int64), bound[b[keep], p[keep]])
        b, p = np.nonzero((kl_np > KL_FLOOR) & text)
        keep = _top((p, row[b], -kl_np[b, p]), self.n_divergent)
        b, p = b[keep], p[keep]
        firings = []
        for acts in (acts_a, acts_b):
            index = torch.as_tensor(b, device=acts.device), torch.as_tensor(p, device=acts.device)
            sel = acts[index].float().cpu()  # [n, d_sae]
            owner, feature = torch.nonzero(sel > 0, as_tuple=True)
            firings.append((owner.numpy(), feature.numpy(), sel[owner, feature].double().numpy()))
        self._offer_divergent(kl_np[b, p], row[b], p.astype(np.int64), firings)

    def _offer_contexts(self, row, token_ids, kl, change, boundary, mean) -> None:
        ctx = self.ctx
        if ctx["token_ids"] is None:
            ctx.update(token_ids=token_ids[:0], kl=kl[:0].astype(np.float32), logprob_change=change[:0],
                       boundary=boundary[:0])
        merged = {"row": np.concatenate([ctx["row"], row]), "mean_kl": np.concatenate([ctx["mean_kl"], mean]),
                  "token_ids": np.concatenate([ctx["token_ids"], token_ids]),
                  "kl": np.concatenate([ctx["kl"], kl.astype(np.float32)]),
                  "logprob_change": np.concatenate([ctx["logprob_change"], change]),
                  "boundary": np.concatenate([ctx["boundary"], boundary])}
        keep = _top((merged["row"], -merged["mean_kl"]), self.n_contexts)  # NaN (no text) sorts last
        self.ctx = {name: values[keep] for name, values in merged.items()}

    def _offer_top(self, kl, row, pos, boundary) -> None:
        top = self.top
        merged = {"kl": np.concatenate([top["kl"], kl]), "row": np.concatenate([top["row"], row]),
                  "pos": np.concatenate([top["pos"], pos]), "boundary": np.concatenate([top["boundary"], boundary])}
        keep = _top((merged["pos"], merged["row"], -merged["kl"]), self.n_top)
        self.top = {name: values[keep] for name, values in merged.items()}

    def _offer_divergent(self, kl, row, pos, firings) -> None:
        n_old = len(self.div_kl)
        all_kl = np.concatenate([self.div_kl, kl])
        all_row, all_pos = np.concatenate([self.div_row, row]), np.concatenate([self.div_pos, pos])
        keep = _top((all_pos, all_row, -all_kl), self.n_divergent)
        new_index = np.full(len(all_kl), -1, np.int64)
        new_index[keep] = np.arange(len(keep))
        for arm in range(2):
            old, new = self.entries[arm], firings[arm]
            owner = np.concatenate([old[0], new[0] + n_old])
            feature, act = np.concatenate([old[1], new[1]]), np.concatenate([old[2], new[2]])
            kept = new_index[owner] >= 0
            self.entries[arm] = (new_index[owner[kept]], feature[kept], act[kept])
        self.div_kl, self.div_row, self.div_pos = all_kl[keep], all_row[keep], all_pos[keep]

    def merge(self, other: Self) -> Self:
        """Fold another accumulator (other rows) in; the result is that of one pass over both."""
        self.rows += other.rows
        self.n_positions += other.n_positions
        self.kl_sums += other.kl_sums
        for arm in range(2):
            self.sum_act[arm] += other.sum_act[arm]
            self.fired[arm] += other.fired[arm]
        if other.ctx["token_ids"] is not None:
            self._offer_contexts(other.ctx["row"], other.ctx["token_ids"], other.ctx["kl"].astype(np.float64),
                                 other.ctx["logprob_change"], other.ctx["boundary"], other.ctx["mean_kl"])
            self.ctx["kl"] = self.ctx["kl"].astype(np.float32)
        self._offer_top(other.top["kl"], other.top["row"], other.top["pos"], other.top["boundary"])
        self._offer_divergent(other.div_kl, other.div_row, other.div_pos, other.entries)
        return self

    def result(self) -> Divergence:
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, 4))
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        n_div = len(self.div_kl)
        n_text = int(self.kl_sums[1])
        enrichment = []
        for arm in range(2):
            owner, feature, act = self.entries[arm]
            sum_div = np.bincount(feature, weights=act, minlength=self.d_sae[arm])
            fired_div = np.bincount(feature, minlength=self.d_sae[arm]).astype(np.int64)
            n_else = n_text - n_div
            enrichment.append(Enrichment(
                mean_divergent=sum_div / n_div if n_div else np.full(self.d_sae[arm], np.nan),
                mean_elsewhere=(self.sum_act[arm] - sum_div) / n_else if n_else else np.full(self.d_sae[arm], np.nan),
                fired_divergent=fired_div, fired_elsewhere=self.fired[arm] - fired_div))
        ctx = self.ctx
        width = 0 if ctx["token_ids"] is None else ctx["token_ids"].shape[1]
        empty = {"token_ids": np.zeros((0, width), np.int64), "kl": np.zeros((0, width), np.float32),
                 "logprob_change": np.zeros((0, width), np.float32), "boundary": np.zeros((0, width), bool)}
        contexts = DivergentContexts(ctx["row"], ctx["mean_kl"], **{k: empty[k] if ctx[k] is None else ctx[k]
                                                                     for k in empty})
        boundaries = BoundaryFigures(n_text, int(self.kl_sums[3]), float(self.kl_sums[0]), float(self.kl_sums[2]),
                                     len(self.top["kl"]), int(self.top["boundary"].sum()))
        return Divergence(self.n_positions, rows[:, 0].astype(np.int64), rows[:, 1], rows[:, 2],
                          rows[:, 3].astype(np.int64), contexts, n_div,
                          float(self.div_kl.min()) if n_div else float("nan"), tuple(enrichment), boundaries)


def divergent_count(n_positions: int, share: float) -> int:
    """Size of the divergent set: the top `share` of n_positions, rounded up (at least one position)."""
    return max(1, math.ceil(share * n_positions))


@torch.no_grad()
def corpus_divergence(arm_a, arm_b, rows: Tensor, row_ids: Iterable[int], n_contexts: int, share: float,
                      rows_per_batch: int, progress: Callable[[Iterable], Iterable] = lambda it: it,
                      special_ids: Collection[int] = (), boundary_tokens: int = 0) -> Divergence:
    """Both arms (core.loading.LoadedArm, one tokenizer) over token rows [n, T] (BOS first) whose corpus row ids
    are `row_ids`: per position KL(a ‖ b), the top `n_contexts` rows by mean KL over their text positions, and each
    arm's features on the top `share` of text positions by KL against the other text positions. Boundary positions
    (core.boundaries.boundary_mask with `special_ids` and `boundary_tokens`; none when special_ids is empty) are
    ranked nowhere and reported apart (Divergence.boundaries)."""
    row_ids = np.asarray(list(row_ids), np.int64)
    boundary = boundary_mask(rows, special_ids, boundary_tokens)  # [n, T - 1], the BOS-less positions
    n_positions = boundary.numel()
    n_text = n_positions - int(boundary.sum())
    accumulator = DivergenceAccumulator(n_contexts, divergent_count(n_text, share),
                                        (arm_a.sae.cfg.d_sae, arm_b.sae.cfg.d_sae), divergent_count(n_positions, share))
    for start in progress(range(0, rows.shape[0], rows_per_batch)):
        batch = rows[start:start + rows_per_batch]
        residual_a, acts_a = residual_and_features(arm_a.model, arm_a.sae, arm_a.hook_name, batch)
        residual_b, acts_b = residual_and_features(arm_b.model, arm_b.sae, arm_b.hook_name, batch)
        kl, change = residual_divergence(arm_a.model, residual_a, arm_b.model, residual_b.to(residual_a.device), batch)
        del residual_a, residual_b
        accumulator.update(row_ids[start:start + rows_per_batch], batch, kl, change, acts_a, acts_b,
                           boundary[start:start + rows_per_batch])
    return accumulator.result()
