"""Mergeable state of a pass over tokens: what lets the corpus be cut into shards and the shards run anywhere.

Every per-token measurement keeps its running state in an accumulator. `update(batch)` folds one batch of
rows in; `merge(other)` folds another accumulator of the same kind (built over other rows) into this one;
`result()` gives the measurement. Splitting the rows into shards in any way and merging in any order gives the
single-pass result: exactly for counts, maxima and top-k (with the tie rule each accumulator names), and to
1e-9 relative for float64 sums. An accumulator holds plain CPU arrays (no model, no open file), so it can be
pickled between processes (the Ray executor returns them from its workers).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from typing import Protocol, Self, TypeVar

R_co = TypeVar("R_co", covariant=True)


class Accumulator(Protocol[R_co]):
    def update(self, *args, **kwargs) -> None:
        """Fold one batch in (what a batch is depends on the pass: rows and their corpus row indices, activations)."""

    def merge(self, other: Self) -> Self:
        """Fold `other` (the same kind, built over other rows) into this one; returns self."""

    def result(self) -> R_co:
        """The measurement over every batch folded in so far."""


A = TypeVar("A", bound=Accumulator)


def merge_all(accumulators: Iterable[A]) -> A:
    """The accumulators folded left to right into the first one (which is changed and returned)."""
    return reduce(lambda merged, other: merged.merge(other), accumulators)


class AccumulatorMap(dict):
    """Accumulators by key, for a pass that measures several things at once (each SAE on each model): updated
    through its members, merged key by key (both sides need the same keys), its result the members' by key."""

    def merge(self, other: AccumulatorMap) -> AccumulatorMap:
        if self.keys() != other.keys():
            raise ValueError(f"cannot merge accumulators of {sorted(other)} into {sorted(self)}")
        for key, accumulator in other.items():
            self[key].merge(accumulator)
        return self

    def result(self) -> dict:
        return {key: accumulator.result() for key, accumulator in self.items()}
