"""A pair stage's token passes cut into shards of the pair's rows: what an executor spreads over workers.

Each pass's `shard(pair, rows, earlier)` runs where both arms are loaded, over any subset of the pair's rows
(token rows [m, T], BOS first), and returns an accumulator (core.accumulator); the accumulators of disjoint
shards merge in any order into the pass over their union. A later pass may need the merged result of the pass
before it, handed over as `earlier` (SAE transfer: the median norm over every shard sets the outlier filter of
the spliced pass). `finish` turns the last pass's merged accumulator into the stage's tables and metrics.

The first pass may instead be a `precompute.plan.PlannedPass` (what it reads, and its accumulator): alone it runs
as a plan of one; `run` serves it from the pair's shared planned pass and hands its accumulator in as `first`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from core.accumulator import merge_all
from precompute.pair import Pair
from precompute.plan import PlannedPass, PlannedShard, run_planned
from precompute.stage import StageResult

Shard = Callable[[Pair, torch.Tensor, Any], Any]  # (pair, rows [m, T], earlier pass's merged result) -> accumulator


@dataclass(frozen=True)
class PairPasses:
    passes: tuple[Shard | PlannedPass, ...]  # only the first may be a PlannedPass
    finish: Callable[[Pair, Any], StageResult]  # (pair, the last pass's merged accumulator) -> tables, metrics

    @property
    def planned(self) -> PlannedPass | None:
        return self.passes[0] if isinstance(self.passes[0], PlannedPass) else None

    def run_whole(self, pair: Pair, first: Any = None) -> StageResult:
        """Every pass over all of the pair's rows in one shard, here (the local executor: today's behaviour)."""
        return self.run_shards(pair, [pair.rows], first)

    def run_shards(self, pair: Pair, shards: Sequence[torch.Tensor], first: Any = None) -> StageResult:
        """Every pass over `shards` (disjoint row sets that together are the pair's rows), merged in order.
        `first`: the first pass's merged accumulator, already computed (by the pair's planned pass)."""
        earlier = merged = None
        for index, shard in enumerate(self.passes):
            if index == 0 and first is not None:
                merged = first
            elif isinstance(shard, PlannedPass):
                merged = run_planned(PlannedShard((("stage", shard),)), pair, shards)["stage"]
            else:
                merged = merge_all(shard(pair, rows, earlier) for rows in shards)
            earlier = merged.result()
        return self.finish(pair, merged)
