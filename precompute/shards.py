"""Shards of a stage's token passes, and where their accumulators are kept until the stage is merged.

A shard is a range of the pass's rows, a whole number of batches long (so a shard's batches are the local
run's batches). Each finished shard's accumulator is saved under `<features_db>.shards/<arm>/<stage>-<key>/`
(a pair stage: under `<arm_a>→<arm_b>/`, each of its passes in its own `pass<i>/` folder) as
`<start>-<stop>.pt` (written to a temporary name, then renamed), so a killed run resumes with only the
missing shards; the folder of a stage goes once the stage is written to the build database.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)
SHARDS_SUFFIX = ".shards"
TOKENS_PER_SHARD = 32_768  # the least a shard holds by default: its accumulator (~8.5 KB a feature) is then small
MAX_SHARDS = 64  # by default a pass is cut into at most this many shards (more only with --shard-rows)


def shard_ranges(n_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `shard_rows` rows covering n_rows (the last may be shorter)."""
    return [(start, min(start + shard_rows, n_rows)) for start in range(0, n_rows, shard_rows)]


def default_shard_rows(n_rows: int, row_tokens: int, batch_size: int) -> int:
    """At least TOKENS_PER_SHARD tokens and at most MAX_SHARDS shards, rounded up to whole batches. It depends
    on the corpus only, never on the number of workers, so a resumed run on another cluster reuses shards."""
    rows = max(math.ceil(n_rows / MAX_SHARDS), math.ceil(TOKENS_PER_SHARD / max(row_tokens, 1)), 1)
    return math.ceil(rows / batch_size) * batch_size


class ShardStore:
    """The saved accumulators of one pass of a stage, by the stage's key (its inputs) and each shard's row range.
    `arm`: the arm's name, or the pair's (`arm_a→arm_b`); `part`: the pass (`pass<i>`) of a stage with several."""

    def __init__(self, features_db: str | Path, arm: str, stage: str, key: str, part: str | None = None) -> None:
        self.root = Path(str(features_db) + SHARDS_SUFFIX) / arm
        self.stage = stage
        self.folder = self.root / f"{stage}-{key[:16]}" / (part or "")

    def path(self, shard: tuple[int, int]) -> Path:
        return self.folder / f"{shard[0]}-{shard[1]}.pt"

    def finished(self, shards: list[tuple[int, int]]) -> list[tuple[int, int]]:
        return [shard for shard in shards if self.path(shard).is_file()]

    def save(self, shard: tuple[int, int], accumulator: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.path(shard).with_suffix(".tmp")
        torch.save(accumulator, temporary)
        os.replace(temporary, self.path(shard))

    def load(self, shard: tuple[int, int]) -> Any:
        # Our own files, written by this precompute: full unpickling is what restores an accumulator.
        return torch.load(self.path(shard), weights_only=False)

    def discard(self) -> None:
        """The stage is in the build database: its shards (every pass's) are no longer needed (nor older keys')."""
        for folder in self.root.glob(f"{self.stage}-*"):
            shutil.rmtree(folder, ignore_errors=True)
        for empty in (self.root, self.root.parent):
            if empty.is_dir() and not any(empty.iterdir()):
                empty.rmdir()


def discard_all(features_db: str | Path) -> None:
    """Every saved shard of the study (`run --fresh` recomputes them too)."""
    shutil.rmtree(Path(str(features_db) + SHARDS_SUFFIX), ignore_errors=True)
