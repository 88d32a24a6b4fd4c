"""The pass planner (issue 24): one forward pass per model per batch serves every pair stage's clean reads.

A pair stage's first pass may be a `PlannedPass`: it declares what it reads from a batch of the pair's rows (`Read`:
one arm's model's activations at a hook, or that model's normalised final residual, which its logits are made of
through the unembedding, a vocabulary chunk at a time: core.chunked_logits), how its accumulator starts (from a
context computed once on the driver over all of the pair's rows) and how a batch of reads updates it.
A `PlannedShard` serves the union of its stages' reads: per batch, each model that something reads runs once, only
as deep as its deepest read, and each stage's accumulator gets its slice. `run` builds one for the out-of-date
stages of a pair (`plan_for`); a stage alone is a plan of one, the pass it always ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.accumulator import AccumulatorMap
from core.hook_reads import resume_layer, run_capturing
from core.loading import stop_layer_for
from precompute.pair import Pair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Read:
    """What a stage reads from a batch: `side` "a" or "b" (whose model runs); at `hook` the activations [B, T, d]
    (BOS included), or with hook None the normalised final residual [B, T, d_model] (what the unembedding reads)."""

    side: str
    hook: str | None = None


@dataclass(frozen=True)
class BatchReads:
    rows: Tensor  # [B, T] token rows, BOS first
    positions: np.ndarray  # [B] int64: each row's index in the pair's rows
    values: dict[Read, Tensor]

    def __getitem__(self, read: Read) -> Tensor:
        return self.values[read]


@dataclass(frozen=True)
class PlannedPass:
    """A stage's first token pass as reads and an accumulator (module-level functions: Ray pickles them)."""

    reads: Callable[[Pair], frozenset[Read]]
    start: Callable[[Pair, Any], Any]  # (pair, context) -> an empty accumulator
    update: Callable[[Pair, Any, BatchReads, Any], None]  # (pair, accumulator, reads, context)
    context: Callable[[Pair], Any] = lambda pair: None  # on the driver, from all of pair.rows (picklable)

    def __call__(self, pair: Pair, rows: Tensor, earlier: Any = None, positions: np.ndarray | None = None) -> Any:
        """A pair pass's shard (precompute.pair_pass): this pass alone, a plan of one, over rows [m, T] whose
        positions in pair.rows are `positions` (default 0..m-1), with its context from all of pair.rows."""
        shard = PlannedShard((("stage", self),))
        return shard(pair, rows, shard.contexts(pair), positions)["stage"]


AUTOCAST_TOLERANCE = 0.02  # bf16 autocast: similarity's mean cosine, KL's mean and matching's correlations move
# by at most this much against float32 (tests/precompute/test_plan_device.py); the accumulators stay float32/64


def read_batch(pair: Pair, batch: Tensor, reads: frozenset[Read]) -> dict[Read, Tensor]:
    """Every read of `reads` for token rows [B, T]: one forward pass per model that is read, stopped after the
    block of its deepest hook unless its final residual is read (never the logits: they are read in chunks).
    With `pair.autocast` the forwards run in bfloat16 autocast and the reads are handed on as float32."""
    if not pair.autocast:
        return _read_batch(pair, batch, reads)
    device_type = torch.device(pair.a.model.cfg.device).type
    with torch.autocast(device_type, dtype=torch.bfloat16):
        out = _read_batch(pair, batch, reads)
    return {read: value.float() for read, value in out.items()}


def _read_batch(pair: Pair, batch: Tensor, reads: frozenset[Read]) -> dict[Read, Tensor]:
    out: dict[Read, Tensor] = {}
    for side, arm in (("a", pair.a), ("b", pair.b)):
        wanted = [read for read in reads if read.side == side]
        if not wanted:
            continue
        model = arm.model
        tokens = batch.to(model.cfg.device)
        hooks = sorted({read.hook for read in wanted if read.hook is not None})
        if any(read.hook is None for read in wanted):
            residual, captured = run_capturing(model, tokens, hooks, stop_at_layer=model.cfg.n_layers)
            out[Read(side)] = model.ln_final(residual) if model.cfg.normalization_type is not None else residual
        else:
            # blocks.L.hook_resid_pre is blocks.{L-1}.hook_resid_post: block L need not run for it
            source = {hook: _before_block(hook) for hook in hooks}
            stops = [stop_layer_for(name) for name in source.values()]
            stop = model.cfg.n_layers if None in stops else max(stops)
            _, found = run_capturing(model, tokens, sorted(set(source.values())), stop_at_layer=stop)
            captured = {hook: found[source[hook]] for hook in hooks}
        out.update({Read(side, hook): captured[hook] for hook in hooks})
    return out


def _before_block(hook: str) -> str:
    layer = resume_layer(hook)
    return f"blocks.{layer - 1}.hook_resid_post" if layer else hook


@dataclass(frozen=True)
class PlannedShard:
    """The planned pass of several stages over any subset of the pair's rows: an AccumulatorMap by stage name.
    Called as a pair pass's shard, with the contexts by stage name as `earlier` and the rows' positions in the
    pair's rows (the Ray worker passes them: `takes_positions`)."""

    stages: tuple[tuple[str, PlannedPass], ...]
    takes_positions = True

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stages)

    def reads(self, pair: Pair) -> frozenset[Read]:
        return frozenset().union(*(planned.reads(pair) for _, planned in self.stages))

    def contexts(self, pair: Pair) -> dict[str, Any]:
        return {name: planned.context(pair) for name, planned in self.stages}

    def describe(self, pair: Pair) -> str:
        reads = sorted(self.reads(pair), key=lambda r: (r.side, r.hook or "~"))
        shown = ", ".join(f"{getattr(pair, r.side).name}:{r.hook or 'final residual'}" for r in reads)
        return f"one pass for {', '.join(self.names)} (reads {shown})"

    @torch.no_grad()
    def __call__(self, pair: Pair, rows: Tensor, contexts: dict[str, Any],
                 positions: Tensor | np.ndarray | None = None) -> AccumulatorMap:
        positions = np.arange(rows.shape[0]) if positions is None else np.asarray(positions, np.int64)
        reads = self.reads(pair)
        accumulators = AccumulatorMap({name: planned.start(pair, contexts[name]) for name, planned in self.stages})
        tokens_per_batch = pair.batch_size * max(rows.shape[1] - 1, 1)
        bar = pair.token_progress(f"pass: {', '.join(self.names)}", tokens_per_batch)
        began = time.perf_counter()
        for start in bar(range(0, rows.shape[0], pair.batch_size)):
            batch = rows[start:start + pair.batch_size]
            got = BatchReads(batch, positions[start:start + pair.batch_size], read_batch(pair, batch, reads))
            for name, planned in self.stages:
                planned.update(pair, accumulators[name], got, contexts[name])
        seconds = time.perf_counter() - began
        logger.debug("pass for %s: %d tokens in %.1f s", ", ".join(self.names), rows.shape[0] * (rows.shape[1] - 1),
                     seconds)
        return accumulators


def plan_for(stages: Sequence[tuple[str, Any]], pair: Pair) -> PlannedShard | None:
    """One planned pass for the given (name, Stage) pairs whose first pass is planned and that can run on this
    pair (skip_reason None); None when there is none."""
    planned = tuple((name, stage.passes.passes[0]) for name, stage in stages
                    if stage.passes is not None and isinstance(stage.passes.passes[0], PlannedPass)
                    and stage.skip_reason(pair) is None)
    return PlannedShard(planned) if planned else None


def run_planned(shard: PlannedShard, pair: Pair, row_shards: Sequence[Tensor]) -> AccumulatorMap:
    """The planned pass over disjoint row shards that together are the pair's rows, in order, merged."""
    contexts = shard.contexts(pair)
    merged, offset = None, 0
    for rows in row_shards:
        part = shard(pair, rows, contexts, np.arange(offset, offset + rows.shape[0]))
        merged = part if merged is None else merged.merge(part)
        offset += rows.shape[0]
    return merged
