"""Where a stage runs: `local` (here, every row in one pass: the default) or `ray` (its token passes cut into
shards that Ray workers run; precompute.ray_executor). `run` asks the executor for each arm and pair stage's
result and writes it to the build database itself, so publishing is the same whichever executor ran it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from core.config import ArmConfig
from core.errors import StudyInputError
from precompute.stage import Stage, StageResult

RAY_INSTALL = "--executor ray needs Ray: run `make install-ray` (or `pip install -r requirements-ray.txt`)"


@dataclass
class LocalExecutor:
    """Every stage here, in this process, as the precompute always ran."""

    shard_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # none: nothing is sharded

    @contextmanager
    def arm(self, arm: ArmConfig, fingerprints: dict[str, str], device: str) -> Iterator[None]:
        yield

    @contextmanager
    def pair(self, arms: tuple[ArmConfig, ArmConfig], fingerprints: tuple[dict[str, str], dict[str, str]],
             settings: dict[str, Any], device: str) -> Iterator[None]:
        yield

    def run_stage(self, stage: Stage, con: Any, inputs: Any, loaded: Any, key: str) -> StageResult:
        return stage.run(con, inputs, loaded)

    def run_plan(self, plan: Any, con: Any, inputs: Any, pair: Any, key: str) -> Any:
        """The pair's planned pass (precompute.plan.PlannedShard) over every row: accumulators by stage name."""
        from precompute.plan import run_planned

        return run_planned(plan, pair, [pair.rows])

    def run_pair_stage(self, stage: Stage, con: Any, inputs: Any, pair: Any, key: str, first: Any = None) -> StageResult:
        if first is not None:  # its first pass came from the pair's planned pass
            return stage.passes.run_whole(pair, first)
        return stage.run(con, pair)  # a stage with passes: PairPasses.run_whole, every row in one shard

    def stage_written(self, features_db: str, arm: str, stage: Stage, key: str) -> None:
        """Called once the stage's result is in the build database."""

    def close(self) -> None:
        """Release what the executor holds (nothing here)."""


def make_executor(name: str, ray_address: str | None = None, workers: int | None = None,
                  shard_rows: int | None = None) -> Any:
    """The executor `--executor` names; Ray is imported only when asked for (it is an optional dependency)."""
    if name == "local":
        if ray_address or workers or shard_rows:
            raise StudyInputError("--ray-address, --ray-workers and --shard-rows go with --executor ray")
        return LocalExecutor()
    if name != "ray":
        raise StudyInputError(f"--executor: 'local' or 'ray', not {name!r}")
    if workers is not None and workers < 1 or shard_rows is not None and shard_rows < 1:
        raise StudyInputError("--ray-workers and --shard-rows must be at least 1")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise StudyInputError(RAY_INSTALL) from None
    from precompute.ray_executor import RayExecutor

    return RayExecutor(address=ray_address, workers=workers, shard_rows=shard_rows)
