"""The declaration of a precompute stage: everything `run` needs to know about one measurement, in one place.

A stage names its version (bump it when its output changes), its scope (one arm, or one pair of arms), the
parts of the study its key hashes, the tokens it reads, the tables it writes (Arrow schemas from
core.database.schema, from which the DDL is generated) and its run function. What it writes is checked
against those schemas before it reaches the database, so a forgotten column fails the run naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import torch

from core.config import StudyConfig
from core.corpus import ROWS_VERSION
from core.database.schema import Table, conform

if TYPE_CHECKING:  # pair_pass imports this module (through precompute.pair)
    from precompute.pair_pass import PairPasses

StageResult = tuple[dict[str, pa.Table], dict[str, float]]


@dataclass(frozen=True)
class KeyParts:
    """What stage keys are made of. `arm`: the arm's config and weight fingerprints (arm stages);
    `fingerprints`: every arm's weight fingerprints by name (pair stages); `earlier`: keys of stages keyed before."""

    config: StudyConfig
    arm: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    earlier: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def corpus(self) -> dict[str, Any]:
        corpus = self.config.corpus
        return {"corpus": dataclasses.asdict(corpus), "files": [file_stamp(p) for p in corpus.paths],
                "rows": ROWS_VERSION}

    @functools.cached_property
    def vocabulary(self) -> list[Any]:
        vocabulary = self.config.medical_vocabulary
        return [file_stamp(vocabulary.path), file_stamp(vocabulary.exclude) if vocabulary.exclude else None]


@dataclass(frozen=True)
class ShardedPass:
    """An arm stage's token pass cut into shards of rows, each run anywhere into an accumulator
    (core.accumulator): what the Ray executor spreads over workers. `rows` and `context` run on the driver;
    `shard` on a worker that holds the loaded arm; `finish` on the driver, over the merged accumulator."""

    name: str  # the stage's, for progress bars and logs
    rows: Callable[[Any, Any], Any]  # (StudyInputs, LoadedArm) -> token rows [n, T] the pass reads, BOS first
    context: Callable[[Any, Any], Any]  # (StudyInputs, LoadedArm) -> what a worker needs besides the arm (picklable)
    shard: Callable[..., Any]  # (LoadedArm, context, rows [m, T], row_ids [m], progress) -> accumulator
    finish: Callable[[Any, Any, Any], StageResult]  # (StudyInputs, LoadedArm, merged accumulator) -> tables, metrics
    batch_size: Callable[[StudyConfig], int] = lambda config: config.activations.batch_size  # shards are multiples

    def run_whole(self, con: Any, inputs: Any, loaded: Any) -> StageResult:
        """The pass over every row in one accumulator, here (the local executor: today's behaviour)."""
        rows = self.rows(inputs, loaded)
        progress = inputs.progress(f"{loaded.name} {self.name}", "batch")
        accumulator = self.shard(loaded, self.context(inputs, loaded), rows, torch.arange(rows.shape[0]), progress)
        return self.finish(inputs, loaded, accumulator)


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when the stage's output changes: every database recomputes it
    scope: Literal["arm", "pair"]
    tables: tuple[Table, ...]  # every table it writes (cleared on each run)
    run: Callable[..., StageResult]  # arm: (con, StudyInputs, LoadedArm); pair: (con, Pair)
    key_parts: Callable[[KeyParts], tuple]  # what its key hashes, besides its version
    tokens: Callable[[StudyConfig], int] | None = None  # size of the token set it reads (0: the whole corpus)
    skip_reason: Callable[[Any], str | None] = lambda _: None  # pair stages: why this pair cannot run it
    sharded: ShardedPass | None = None  # arm stages whose token pass merges from shards (the Ray executor's)
    passes: PairPasses | None = None  # pair stages whose token passes merge from shards (the Ray executor's)

    def __post_init__(self) -> None:
        if self.scope not in ("arm", "pair"):
            raise ValueError(f"stage {self.name}: scope is 'arm' or 'pair', not {self.scope!r}")
        if (self.passes if self.scope == "arm" else self.sharded) is not None:
            raise ValueError(f"stage {self.name}: `sharded` is for arm stages, `passes` for pair stages")
        wrong = [t.name for t in self.tables if t.keyed_by != self.scope]
        if wrong:
            raise ValueError(f"stage {self.name} ({self.scope}) writes tables keyed by another scope: {wrong}")

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tables)

    def key(self, parts: KeyParts) -> str:
        return hash_parts(*self.key_parts(parts), self.version)

    def conform(self, written: dict[str, pa.Table]) -> dict[str, pa.Table]:
        """`written` checked against (and cast to) the declared schemas; an undeclared table is an error."""
        declared = {t.name: t for t in self.tables}
        unknown = sorted(set(written) - set(declared))
        if unknown:
            raise ValueError(f"stage {self.name} wrote table(s) it does not declare: {', '.join(unknown)}")
        return {name: conform(declared[name], table, self.name) for name, table in written.items()}


def hash_parts(*parts: Any) -> str:
    plain = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def file_stamp(path: str) -> list[Any]:
    """Content hash of a file (corpus and vocabulary files are read whole anyway)."""
    p = Path(path)
    if not p.is_file():
        return [path, None]
    stat = p.stat()
    return [path, _content_hash(str(p), stat.st_size, stat.st_mtime_ns)]


@functools.lru_cache(maxsize=64)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    # Every arm and the pair key on the same files: hash each version of a file once per process.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
