"""`python -m precompute run`: every stage for every arm of a study, into one DuckDB file published atomically.

The stages are declared in precompute.stages (in the order they run): per arm, projection, words, activations,
quality, neighbours; then, for each pair the config declares (`[[pairs]]`, default every other arm against the first), the
pair stages similarity, transfer, matching, divergence, cross_neighbours, map, with the pair's two arms loaded (never more than two at a
time). Each stage has a key: a hash of everything it reads (the arm's weights, or the pair's two arms' weights,
the config fields it uses, the files it reads) and its version. A stage whose key is already in the database is
skipped; any change recomputes exactly the stages it affects. An executor (precompute.executors) computes each
stage's result: here, or in shards on Ray workers; the writes and the publish are the same either way. The
math lives in core/; this is orchestration.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from tqdm import tqdm

from core import database as db
from core.activations import HIST_EDGES, INTERVAL_EDGES
from core.config import ArmConfig, StudyConfig
from core.errors import StudyInputError
from core.loading import LoadedArm, decoder_fingerprint, load_arm, weights_fingerprint
from core.vocabulary import load_study_vocabulary
from precompute import stages
from precompute.executors import LocalExecutor
from precompute.inputs import StudyInputs, progress_bar
from precompute.pair import Pair
from precompute.plan import plan_for
from precompute.shards import discard_all
from precompute.stage import KeyParts, hash_parts

logger = logging.getLogger(__name__)
VERSIONED_PACKAGES = ("torch", "transformer-lens", "sae-lens", "transformers", "duckdb", "gensim", "numpy")


@dataclass
class RunReport:
    """What a run did: stage seconds per arm (skipped stages absent), whether it published, and the summary."""

    published: bool = False
    up_to_date: bool = False
    seconds: dict[str | tuple[str, str], dict[str, float]] = field(default_factory=dict)  # by arm or (arm_a, arm_b)
    pending: list[str] = field(default_factory=list)  # "arm/stage" or "arm_a→arm_b/stage" left undone (--only)
    shards: dict[str, dict[str, int]] = field(default_factory=dict)  # ray: "arm/stage", "a→b/stage" -> shards, ...


def parse_only(text: str | None) -> tuple[str, ...]:
    known = tuple(stages.REGISTRY)
    if not text:
        return known
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise StudyInputError(f"--only: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(known)}")
    return names


def run_study(config: StudyConfig, device: str | None = None, only: Iterable[str] | None = None,
              fresh: bool = False, show_progress: bool = True, executor: Any = None) -> RunReport:
    """Run the stages of `only` that are not up to date for every arm, then publish if nothing is pending.
    `executor`: where arm and pair stages run (precompute.executors; default: here, `LocalExecutor`)."""
    only = tuple(stages.REGISTRY) if only is None else tuple(only)
    executor = LocalExecutor() if executor is None else executor
    target = Path(config.features_db)
    inputs = StudyInputs(config, _medical_words(config), show_progress=show_progress)
    con, origin = db.open_build(target, fresh=fresh)
    if fresh:
        discard_all(target)
    report = RunReport()
    try:
        db.write_study(con, config.name, config.description, json.dumps(config.to_dict(), sort_keys=True),
                       config.config_hash(), json.dumps(package_versions(), sort_keys=True),
                       HIST_EDGES.tolist(), INTERVAL_EDGES.tolist())
        pairs = [pair.names for pair in config.run_pairs]  # declared pairs, then their controls' pairs
        # an arm or pair left out of the config changes the database even when no stage has to run
        dropped = db.drop_arms_except(con, [arm.name for arm in config.arms], pairs) + db.write_pairs(
            con, [(*pair.names, pair.control, pair.controls) for pair in config.run_pairs])
        stages_run = [s for s in stages.REGISTRY.values() if s.scope == "arm" or pairs]
        db.write_token_sets(con, [ts for ts in map(inputs.token_set, stages_run) if ts is not None])
        fingerprints = {arm.name: _run_arm(con, inputs, arm, position, device or config.device, only, report,
                                           executor)
                        for position, arm in enumerate(config.arms)}
        for names in pairs:
            _run_pair(con, inputs, names, fingerprints, device or config.device, only, report, executor)
    except BaseException:
        con.close()  # the build file keeps every finished stage for the next run
        raise
    finally:
        report.shards = dict(executor.shard_counts)
    if report.pending:
        con.close()
        logger.warning("not published: %s still to run; run without --only to finish", ", ".join(report.pending))
        return report
    if origin == "copied" and not report.seconds and not dropped:
        con.close()
        db.discard_build(target)
        report.up_to_date = True
        return report
    db.publish(con, target)
    report.published = True
    return report


def _medical_words(config: StudyConfig) -> frozenset[str]:
    exclude = config.medical_vocabulary.exclude
    return load_study_vocabulary(Path(config.medical_vocabulary.path), Path(exclude) if exclude else None)


def pair_name(names: tuple[str, str]) -> str:
    """A pair in logs and messages ("base→finetuned"); the database names it by arm_a, arm_b."""
    return "→".join(names)


def _run_arm(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, arm: ArmConfig, position: int,
             device: str, only: tuple[str, ...], report: RunReport, executor: Any) -> dict[str, str]:
    """The per-arm stages; returns the arm's weight fingerprints (the cross stages' keys use them)."""
    loaded = load_arm(arm, device, generates=False)  # activation stages: no generation
    try:
        fingerprints = {"model": weights_fingerprint(loaded.model), "sae": weights_fingerprint(loaded.sae)}
        keys = stage_keys(inputs.config, arm, fingerprints)
        db.write_arm(con, _arm_row(arm, loaded, position, fingerprints["model"]))
        todo = [s for s in stages.ARM_STAGES if s in only and db.stage_key(con, arm.name, s) != keys[s]]
        if any(stages.REGISTRY[name].tokens is not None for name in todo):
            inputs.corpus_rows(loaded)  # a corpus too short fails now, not after the other stages
        with executor.arm(arm, fingerprints, device):
            for name in stages.ARM_STAGES:
                if db.stage_key(con, arm.name, name) == keys[name]:
                    logger.info("%s/%s: up to date, skipped", arm.name, name)
                    continue
                if name not in only:
                    report.pending.append(f"{arm.name}/{name}")
                    continue
                _run_arm_stage(con, inputs, loaded, stages.REGISTRY[name], keys[name], report, executor)
        return fingerprints
    finally:
        del loaded
        gc.collect()


def _run_arm_stage(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm, stage: Any, key: str,
                   report: RunReport, executor: Any) -> None:
    start = time.perf_counter()
    tables, metrics = executor.run_stage(stage, con, inputs, loaded, key)
    seconds = time.perf_counter() - start
    measured_on = inputs.token_set(stage)
    db.write_stage(con, loaded.name, stage.name, key, seconds, stage.conform(tables), metrics,
                   token_set=measured_on.name if measured_on else None, owns=stage.table_names)
    executor.stage_written(inputs.config.features_db, loaded.name, stage, key)
    report.seconds.setdefault(loaded.name, {})[stage.name] = seconds
    logger.info("%s/%s: done in %.1f s", loaded.name, stage.name, seconds)


def pair_keys(config: StudyConfig, names: tuple[str, str], fingerprints: dict[str, dict[str, str]]) -> dict[str, str]:
    """The key of each pair stage for one pair: it hashes the weights of the pair's two arms only, so a change
    to a third arm leaves this pair's results standing."""
    parts = KeyParts(config, fingerprints={name: fingerprints[name] for name in names})
    return {name: stages.REGISTRY[name].key(parts) for name in stages.PAIR_STAGES}


def _run_pair(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, names: tuple[str, str],
              fingerprints: dict[str, dict[str, str]], device: str, only: tuple[str, ...], report: RunReport,
              executor: Any) -> None:
    """One pair's cross-arm stages, with its two arms loaded at once (only when one of them has to run)."""
    config = inputs.config
    label = pair_name(names)
    keys = pair_keys(config, names, fingerprints)
    todo = [s for s in stages.PAIR_STAGES if db.stage_key(con, names, s) != keys[s]]
    report.pending += [f"{label}/{s}" for s in todo if s not in only]
    todo = [s for s in todo if s in only]
    if not todo:
        logger.info("%s: up to date, skipped", label)
        return
    reading = [s for s in todo if stages.REGISTRY[s].tokens is not None]  # decoder-only stages read no tokens
    sample = inputs.token_set(stages.REGISTRY[reading[0]]) if reading else None  # all of them read the same rows
    if sample is not None:
        logger.info("%s: %s, %s tokens (%s)", label, sample.name, f"{sample.n_tokens:,}",
                    ", ".join(f"{source} {n} rows" for source, n in sample.sources))
    a, b = (load_arm(config.arm(name), device, generates=False) for name in names)
    pair = Pair(a, b, None if sample is None else sample.select(inputs.corpus_rows(a)), config.activations.batch_size,
                config.diff.match_threshold, config.diff.outlier_factor,
                lambda desc: progress_bar(inputs.show_progress, desc, "batch"), config.diff.min_firings,
                () if sample is None else sample.rows, lens_layers=config.diff.lens_layers,
                lens_positions=config.diff.lens_positions, medical_words=inputs.medical_words,
                boundary_tokens=config.diff.boundary_tokens, tokens_progress=_tokens_bar(inputs.show_progress),
                autocast=a.device == "cuda")
    try:
        with executor.pair(tuple(map(config.arm, names)), tuple(fingerprints[name] for name in names),
                           pair.settings(), device):
            first, shared = _run_plan(con, inputs, pair, todo, keys, executor)
            for name in todo:
                token_set = sample.name if stages.REGISTRY[name].tokens is not None else None
                seconds = _run_pair_stage(con, inputs, pair, name, keys[name], token_set, executor,
                                          first.get(name), shared.get(name, 0.0))
                report.seconds.setdefault(names, {})[name] = seconds
    finally:
        del a, b, pair  # the next pair loads its own two arms
        gc.collect()


def _tokens_bar(show: bool) -> Any:
    """The planned passes' bars: batches counted in tokens, so the rate reads tokens/s."""
    if not show:
        return lambda desc, tokens_per_batch: (lambda it: it)
    return lambda desc, tokens_per_batch: (lambda it: tqdm(it, desc=desc, unit="tok", unit_scale=tokens_per_batch,
                                                           leave=False))


def _run_plan(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, pair: Pair, todo: list[str],
              keys: dict[str, str], executor: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """The pair's planned pass (precompute.plan): one forward per model per batch for every out-of-date stage
    whose first pass is planned. Returns each served stage's merged accumulator and its share of the seconds."""
    plan = plan_for([(name, stages.REGISTRY[name]) for name in todo], pair)
    if plan is None:
        return {}, {}
    logger.info("%s: %s", pair_name(pair.names), plan.describe(pair))
    start = time.perf_counter()
    merged = executor.run_plan(plan, con, inputs, pair, hash_parts(*(keys[name] for name in plan.names)))
    seconds = time.perf_counter() - start
    logger.info("%s: planned pass for %s done in %.1f s", pair_name(pair.names), ", ".join(plan.names), seconds)
    return dict(merged), {name: seconds / len(plan.names) for name in plan.names}


def _run_pair_stage(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, pair: Pair, name: str, key: str,
                    token_set: str | None, executor: Any, first: Any = None, shared_seconds: float = 0.0) -> float:
    """One pair stage (or its skip, with the reason as its note) written for the pair; returns its seconds (with
    its even share of the planned pass that served its first pass, `first`)."""
    label = pair_name(pair.names)
    stage = stages.REGISTRY[name]
    start = time.perf_counter()
    reason = stage.skip_reason(pair)
    if reason is not None:
        logger.warning("%s/%s: %s", label, name, reason)
        tables, metrics = {}, {"skipped": 1.0}
    else:
        tables, metrics = executor.run_pair_stage(stage, con, inputs, pair, key, first)
    seconds = time.perf_counter() - start + shared_seconds
    db.write_stage(con, pair.names, name, key, seconds, stage.conform(tables), metrics, note=reason,
                   token_set=token_set, owns=stage.table_names)
    executor.stage_written(inputs.config.features_db, label, stage, key)
    logger.info("%s/%s: done in %.1f s", label, name, seconds)
    return seconds


def stage_keys(config: StudyConfig, arm: ArmConfig, fingerprints: dict[str, str]) -> dict[str, str]:
    """The key of each per-arm stage, in registry order (a stage's key may chain on an earlier one's)."""
    keys: dict[str, str] = {}
    arm_part = {"arm": dataclasses.asdict(arm), **fingerprints}
    parts = KeyParts(config, arm=arm_part, earlier=keys)
    for name in stages.ARM_STAGES:
        keys[name] = stages.REGISTRY[name].key(parts)
    return keys


def _arm_row(arm: ArmConfig, loaded: LoadedArm, position: int, model_fingerprint: str) -> dict[str, Any]:
    return {
        "arm": arm.name, "position": position, "model": arm.model, "sae_source": arm.sae_source,
        "hook_name": loaded.hook_name, "d_in": int(loaded.sae.cfg.d_in), "d_sae": loaded.d_sae,
        "d_vocab": int(loaded.model.cfg.d_vocab), "n_layers": int(loaded.model.cfg.n_layers),
        "device": loaded.device, "model_fingerprint": model_fingerprint,
        "sae_fingerprint": decoder_fingerprint(loaded.sae), "processing_json": json.dumps(loaded.processing),
    }


def package_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in VERSIONED_PACKAGES}
