"""The Ray executor: each stage with sharded passes is cut into shards of rows: an arm stage's pass
(precompute.stage.ShardedPass), and each pass of a pair stage in turn (precompute.pair_pass.PairPasses, the
merged result of one pass handed to the next). One actor per worker loads the arm, or the pair's two arms, once
(one GPU each where the cluster has GPUs, else one CPU and one thread each) and returns each shard's
accumulator; the driver saves it (precompute.shards), merges them in row order and hands the result to `run`,
which writes and publishes as for the local executor. Stages without sharded passes run on the driver. A
worker that dies is restarted and its shard retried by Ray.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from core.accumulator import merge_all
from core.config import ArmConfig
from core.errors import StudyInputError
from core.loading import LoadedArm, load_arm, weights_fingerprint
from precompute import stages
from precompute.pair import Pair
from precompute.plan import PlannedPass, PlannedShard
from precompute.shards import ShardStore, default_shard_rows, shard_ranges
from precompute.stage import Stage, StageResult

logger = logging.getLogger(__name__)
IN_FLIGHT = 2  # shards queued per worker, so the next one is there when one finishes
MAX_RESTARTS = 3  # a dead worker's actor is restarted (reloading its arms) this many times
MAX_TASK_RETRIES = 3  # and the shard it held is run again
WORKER_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE", "TOKENIZERS_PARALLELISM", "HF_HOME")
PACKAGES = [str(Path(__file__).resolve().parents[1] / name) for name in ("core", "precompute")]


@dataclass(frozen=True)
class WorkerLoad:
    """What each worker loads: one arm, or a pair's two arms and the pair's settings (Pair.settings)."""

    arms: tuple[ArmConfig, ...]
    fingerprints: tuple[dict[str, str], ...]  # each arm's weight fingerprints, as the driver found them
    pair_settings: dict[str, Any] | None = None


class ArmWorker:
    """A Ray actor: an arm, or a pair's two arms, loaded once, then shards of their passes."""

    def __init__(self, load: WorkerLoad, device: str, threads: int | None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.loaded = [_load_as_on_driver(arm, found, device) for arm, found in zip(load.arms, load.fingerprints)]
        self.pair = None if load.pair_settings is None else Pair(
            *self.loaded, rows=None, progress=lambda desc: (lambda it: it), **load.pair_settings)

    def ready(self) -> bool:
        return True

    def run_shard(self, shard_fn: Callable[..., Any], context: Any, rows: torch.Tensor, row_ids: torch.Tensor,
                  shard: tuple[int, int]) -> tuple[tuple[int, int], Any, float]:
        """The shard's accumulator (on the CPU, to be pickled) and the seconds it took. `shard_fn` is the
        stage's, sent by the driver: an arm pass's (loaded, context, rows, row_ids), or a pair pass's
        (pair, rows, earlier), where `context` is the merged result of the pass before (None for the first)."""
        start = time.perf_counter()
        if self.pair is None:
            accumulator = shard_fn(self.loaded[0], context, rows, row_ids).to("cpu")
        elif getattr(shard_fn, "takes_positions", False):  # a planned pass: row_ids are positions in the pair's rows
            accumulator = shard_fn(self.pair, rows, context, row_ids.numpy())
        else:
            accumulator = shard_fn(self.pair, rows, context)  # pair accumulators keep their state on the CPU
        return shard, accumulator, time.perf_counter() - start


def _load_as_on_driver(arm: ArmConfig, fingerprints: dict[str, str], device: str) -> LoadedArm:
    loaded = load_arm(arm, device, verify=False, generates=False)  # the driver verified these weights
    found = {"model": weights_fingerprint(loaded.model), "sae": weights_fingerprint(loaded.sae)}
    if found != fingerprints:
        raise RuntimeError(f"arm {arm.name} loads other weights on {socket.gethostname()} than on the driver: "
                           "every node needs the same model and SAE files at the same paths")
    return loaded


class RayExecutor:
    def __init__(self, address: str | None = None, workers: int | None = None, shard_rows: int | None = None) -> None:
        self.started = not ray.is_initialized()
        if self.started:
            env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
            # A local instance's workers import this checkout; a cluster's get its packages shipped.
            runtime_env = {"env_vars": env} | ({"py_modules": PACKAGES} if address else {})
            try:
                ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except ConnectionError as err:
                raise StudyInputError(f"--ray-address {address}: no Ray cluster answers there ({err}); start one "
                                      "with `ray start --head`, or leave --ray-address out for a local one") from None
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        slots = self.gpus or max(int(resources.get("CPU", 1)), 1)
        if workers and workers > slots:  # an actor without a free slot would wait forever, and its shards with it
            logger.warning("--ray-workers %d: the cluster has %d %s; using %d", workers, slots,
                           "GPUs" if self.gpus else "CPUs", slots)
        self.workers = min(workers or slots, slots)
        self.shard_rows = shard_rows
        self.shard_counts: dict[str, dict[str, int]] = {}  # "arm/stage" -> shards, reused, run (over its passes)
        self.shard_seconds: list[tuple[int, float]] = []  # (rows, seconds on its worker) per shard run
        self._load: WorkerLoad | None = None
        self._actors: list[Any] = []
        self._plan_stores: list[ShardStore] = []  # the planned passes' shards, discarded when their pair is done
        on_driver = [name for name, stage in stages.REGISTRY.items() if stage.sharded is None and stage.passes is None]
        logger.info("ray executor: %d worker(s), each with %s; on the driver (no accumulator yet): %s", self.workers,
                    "one GPU" if self.gpus else "one CPU and one thread", ", ".join(on_driver))

    @contextmanager
    def arm(self, arm: ArmConfig, fingerprints: dict[str, str], device: str) -> Iterator[None]:
        """The workers of one arm: started with its first sharded stage, stopped after its last."""
        with self._holding(WorkerLoad((arm,), (fingerprints,))):
            yield

    @contextmanager
    def pair(self, arms: tuple[ArmConfig, ArmConfig], fingerprints: tuple[dict[str, str], dict[str, str]],
             settings: dict[str, Any], device: str) -> Iterator[None]:
        """The workers of one pair (both arms loaded in each): started with its first sharded stage."""
        with self._holding(WorkerLoad(arms, fingerprints, settings)):
            yield
        for store in self._plan_stores:  # every stage of the pair is written: its planned passes are spent
            store.discard()
        self._plan_stores = []

    @contextmanager
    def _holding(self, load: WorkerLoad) -> Iterator[None]:
        self._load = load
        try:
            yield
        finally:
            for actor in self._actors:
                ray.kill(actor)
            self._load, self._actors = None, []

    def run_stage(self, stage: Stage, con: Any, inputs: Any, loaded: Any, key: str) -> StageResult:
        if stage.sharded is None:
            logger.info("%s/%s: no accumulator yet, so it runs on the driver", loaded.name, stage.name)
            return stage.run(con, inputs, loaded)
        sharded = stage.sharded
        store = ShardStore(inputs.config.features_db, loaded.name, stage.name, key)
        progress = inputs.progress(f"{loaded.name} {stage.name}", "shard")
        merged = self._sharded_pass(store, sharded.shard, sharded.context(inputs, loaded),
                                    sharded.rows(inputs, loaded), sharded.batch_size(inputs.config), progress)
        return sharded.finish(inputs, loaded, merged)

    def run_plan(self, plan: PlannedShard, con: Any, inputs: Any, pair: Pair, key: str) -> Any:
        """The pair's planned pass over shards of its rows: accumulators by stage name, merged in row order. Its
        shards are kept under `plan-<key>` (the key hashes the served stages' keys) until the pair is done."""
        label = "→".join(pair.names)
        store = ShardStore(inputs.config.features_db, label, "plan", key)
        progress = inputs.progress(f"{label} pass for {', '.join(plan.names)}", "shard")
        merged = self._sharded_pass(store, plan, plan.contexts(pair), pair.rows, pair.batch_size, progress)
        self._plan_stores.append(store)
        return merged

    def run_pair_stage(self, stage: Stage, con: Any, inputs: Any, pair: Pair, key: str, first: Any = None) -> StageResult:
        """Each pass of the stage over shards of the pair's rows, the merged result of one handed to the next;
        `first`: the first pass's merged accumulator from the pair's planned pass."""
        label = "→".join(pair.names)
        if stage.passes is None:
            logger.info("%s/%s: no accumulator yet, so it runs on the driver", label, stage.name)
            return stage.run(con, pair)
        passes = stage.passes.passes
        earlier = merged = None
        for index, shard_fn in enumerate(passes):
            if index == 0 and first is not None:
                merged = first
            else:
                store = ShardStore(inputs.config.features_db, label, stage.name, key,
                                   part=f"pass{index}" if len(passes) > 1 else None)
                progress = inputs.progress(f"{label} {stage.name} pass {index + 1}/{len(passes)}", "shard")
                planned = isinstance(shard_fn, PlannedPass)
                fn = PlannedShard(((stage.name, shard_fn),)) if planned else shard_fn
                context = fn.contexts(pair) if planned else earlier
                merged = self._sharded_pass(store, fn, context, pair.rows, pair.batch_size, progress)
                merged = merged[stage.name] if planned else merged
            earlier = merged.result()
        return stage.passes.finish(pair, merged)

    def _sharded_pass(self, store: ShardStore, shard_fn: Callable[..., Any], context: Any, rows: torch.Tensor,
                      batch_size: int, progress: Any) -> Any:
        """One pass over `rows` [n, T] in shards of whole batches: the shards an earlier run saved in `store`
        are reused, the others run on the workers and saved; all of them merged in row order."""
        size = (math.ceil(self.shard_rows / batch_size) * batch_size if self.shard_rows
                else default_shard_rows(rows.shape[0], rows.shape[1] - 1, batch_size))
        shards = shard_ranges(rows.shape[0], size)
        saved = store.finished(shards)
        missing = [shard for shard in shards if shard not in saved]
        name = f"{store.root.name}/{store.stage}"
        logger.info("%s: %d shard(s) of %d rows; %d saved by an earlier run, %d to run on %d worker(s)",
                    name, len(shards), size, len(saved), len(missing), self.workers)
        if missing:
            self._run_shards(shard_fn, context, rows, missing, store, progress)
        counts = self.shard_counts.setdefault(name, {"shards": 0, "reused": 0, "run": 0})
        for count, n in (("shards", len(shards)), ("reused", len(saved)), ("run", len(missing))):
            counts[count] += n
        return merge_all(store.load(shard) for shard in shards)  # in row order, one shard in memory at a time

    def _run_shards(self, shard_fn: Callable[..., Any], context: Any, rows: torch.Tensor,
                    missing: list[tuple[int, int]], store: ShardStore, progress: Any) -> None:
        """Each worker keeps IN_FLIGHT shards queued; each result is saved as soon as it comes back."""
        actors = self._workers()
        context_ref = ray.put(context)
        queue, in_flight = deque(missing), {}

        def submit(actor: Any) -> None:
            start, stop = queue.popleft()
            # clone: a slice would pickle the whole corpus tensor underneath it
            ref = actor.run_shard.remote(shard_fn, context_ref, rows[start:stop].clone(), torch.arange(start, stop),
                                         (start, stop))
            in_flight[ref] = actor

        for actor in actors * IN_FLIGHT:
            if queue:
                submit(actor)
        for _ in progress(range(len(missing))):
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ref)
            shard, accumulator, seconds = ray.get(ref)
            store.save(shard, accumulator)
            self.shard_seconds.append((shard[1] - shard[0], seconds))
            if queue:
                submit(actor)

    def _workers(self) -> list[Any]:
        if not self._actors:
            resources = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
            worker = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES, **resources)(ArmWorker)
            device, threads = ("cuda", None) if self.gpus else ("cpu", 1)
            self._actors = [worker.remote(self._load, device, threads) for _ in range(self.workers)]
        return self._actors

    def stage_written(self, features_db: str, arm: str, stage: Stage, key: str) -> None:
        if stage.sharded is not None or stage.passes is not None:
            ShardStore(features_db, arm, stage.name, key).discard()

    def close(self) -> None:
        if self.started:
            ray.shutdown()
