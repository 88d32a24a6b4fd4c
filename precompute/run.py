"""`python -m precompute run`: every stage for every arm of a study, into one DuckDB file published atomically.

Stages per arm, in order: projection (top / bottom tokens of W_dec @ W_U), words (coherence, medical matches),
activations (one pass over the corpus: densities, histograms, contexts, unigram, LLR), quality (L0, explained
variance, CE loss spliced and zero-ablated, the median activation norm at the hook: the Steer page's scale).
Each stage has a key: a hash of everything it reads (the arm's weights, the config fields it uses, the files it
reads). A stage whose key is already in the database is skipped; any change recomputes exactly the stages it
affects. The math lives in core/; this is orchestration.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import importlib.metadata
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from tqdm.auto import tqdm

from core import database as db
from core.activations import HIST_EDGES, INTERVAL_EDGES
from core.config import ArmConfig, StudyConfig
from core.errors import StudyInputError
from core.loading import LoadedArm, decoder_fingerprint, load_arm, weights_fingerprint
from core.vocabulary import load_study_vocabulary
from precompute import diff, stages

logger = logging.getLogger(__name__)
STAGES = ("projection", "words", "activations", "quality")
CROSS_STAGES = db.CROSS_STAGES  # a two-arm study also runs these, once for the pair
# Bump when a stage's output changes. projection 2: byte tokens read <0x8F>, not "\ufffd"; activations 2:
# interval samples per firing token, fired_tokens; quality 2 and the cross stages 2: an even sample of every
# corpus file, not the first rows (the first file's alone), and quality's median_activation_norm; matching 2:
# dead / rare statuses, every pair, the assignment.
STAGE_VERSION = {"projection": 2, "words": 1, "activations": 2, "quality": 2, "similarity": 2, "transfer": 2,
                 "matching": 2}
VERSIONED_PACKAGES = ("torch", "transformer-lens", "sae-lens", "transformers", "duckdb", "gensim", "numpy")


@dataclass
class RunReport:
    """What a run did: stage seconds per arm (skipped stages absent), whether it published, and the summary."""

    published: bool = False
    up_to_date: bool = False
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # "arm/stage" left undone (--only)


def parse_only(text: str | None) -> tuple[str, ...]:
    known = STAGES + CROSS_STAGES
    if not text:
        return known
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown:
        raise StudyInputError(f"--only: unknown stage(s) {', '.join(unknown)}; stages are {', '.join(known)}")
    return names


def run_study(config: StudyConfig, device: str | None = None, only: Iterable[str] = STAGES + CROSS_STAGES,
              fresh: bool = False, show_progress: bool = True) -> RunReport:
    """Run the stages of `only` that are not up to date for every arm, then publish if nothing is pending."""
    only = tuple(only)
    target = Path(config.features_db)
    inputs = stages.StudyInputs(config, _medical_words(config), show_progress=show_progress)
    con, origin = db.open_build(target, fresh=fresh)
    report = RunReport()
    try:
        db.write_study(con, config.name, config.description, json.dumps(config.to_dict(), sort_keys=True),
                       config.config_hash(), json.dumps(package_versions(), sort_keys=True),
                       HIST_EDGES.tolist(), INTERVAL_EDGES.tolist())
        db.drop_arms_except(con, [arm.name for arm in config.arms] + _pair_labels(config))
        stages_run = STAGES + (CROSS_STAGES if len(config.arms) == 2 else ())
        db.write_token_sets(con, [ts for ts in map(inputs.token_set, stages_run) if ts is not None])
        fingerprints = {arm.name: _run_arm(con, inputs, arm, position, device or config.device, only, report)
                        for position, arm in enumerate(config.arms)}
        if len(config.arms) == 2:
            _run_pair(con, inputs, fingerprints, device or config.device, only, report)
    except BaseException:
        con.close()  # the build file keeps every finished stage for the next run
        raise
    if report.pending:
        con.close()
        logger.warning("not published: %s still to run; run without --only to finish", ", ".join(report.pending))
        return report
    if origin == "copied" and not report.seconds:
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


def _pair_labels(config: StudyConfig) -> list[str]:
    return [f"{config.arms[0].name}|{config.arms[1].name}"] if len(config.arms) == 2 else []


def _run_arm(con: duckdb.DuckDBPyConnection, inputs: stages.StudyInputs, arm: ArmConfig, position: int,
             device: str, only: tuple[str, ...], report: RunReport) -> dict[str, str]:
    """The per-arm stages; returns the arm's weight fingerprints (the cross stages' keys use them)."""
    loaded = load_arm(arm, device)
    try:
        fingerprints = {"model": weights_fingerprint(loaded.model), "sae": weights_fingerprint(loaded.sae)}
        keys = stage_keys(inputs.config, arm, fingerprints)
        db.write_arm(con, _arm_row(arm, loaded, position, fingerprints["model"]))
        todo = [s for s in STAGES if s in only and db.stage_key(con, arm.name, s) != keys[s]]
        if {"activations", "quality"} & set(todo):
            inputs.corpus_rows(loaded)  # a corpus too short fails now, not after the other stages
        for stage in STAGES:
            if db.stage_key(con, arm.name, stage) == keys[stage]:
                logger.info("%s/%s: up to date, skipped", arm.name, stage)
                continue
            if stage not in only:
                report.pending.append(f"{arm.name}/{stage}")
                continue
            start = time.perf_counter()
            tables, metrics = stages.RUNNERS[stage](con, inputs, loaded)
            seconds = time.perf_counter() - start
            measured_on = inputs.token_set(stage)
            db.write_stage(con, arm.name, stage, keys[stage], seconds, tables, metrics,
                           token_set=measured_on.name if measured_on else None)
            report.seconds.setdefault(arm.name, {})[stage] = seconds
            logger.info("%s/%s: done in %.1f s", arm.name, stage, seconds)
        return fingerprints
    finally:
        del loaded
        gc.collect()


def _run_pair(con: duckdb.DuckDBPyConnection, inputs: stages.StudyInputs, fingerprints: dict[str, dict[str, str]],
              device: str, only: tuple[str, ...], report: RunReport) -> None:
    """The cross-arm stages, with both arms loaded at once (only when one of them has to run)."""
    config = inputs.config
    label = _pair_labels(config)[0]
    keys = {stage: _hash(fingerprints, _corpus_part(config), config.diff, config.activations.batch_size,
                         STAGE_VERSION[stage]) for stage in CROSS_STAGES}
    todo = [s for s in CROSS_STAGES if db.stage_key(con, label, s) != keys[s]]
    report.pending += [f"{label}/{s}" for s in todo if s not in only]
    todo = [s for s in todo if s in only]
    if not todo:
        return
    a, b = (load_arm(arm, device) for arm in config.arms)
    sample = inputs.token_set("matching")  # every cross stage reads the same rows, both arms the same rows
    logger.info("%s: %s, %s tokens (%s)", label, sample.name, f"{sample.n_tokens:,}",
                ", ".join(f"{source} {n} rows" for source, n in sample.sources))
    pair = diff.Pair(a, b, sample.select(inputs.corpus_rows(a)), config.activations.batch_size,
                     config.diff.match_threshold, config.diff.outlier_factor,
                     lambda desc: progress_bar(inputs.show_progress, desc, "batch"), config.diff.min_firings)
    for stage in todo:
        start = time.perf_counter()
        reason = diff.skip_reason(pair, stage)
        if reason is not None:
            logger.warning("%s/%s: %s", label, stage, reason)
            tables, metrics = {}, {"skipped": 1.0}
        else:
            tables, metrics = diff.RUNNERS[stage](con, pair)
        seconds = time.perf_counter() - start
        db.write_stage(con, label, stage, keys[stage], seconds, tables, metrics, note=reason, token_set=sample.name)
        report.seconds.setdefault(label, {})[stage] = seconds
        logger.info("%s/%s: done in %.1f s", label, stage, seconds)


def stage_keys(config: StudyConfig, arm: ArmConfig, fingerprints: dict[str, str]) -> dict[str, str]:
    """The key of each stage: a hash of the arm's weights, the config it reads and the files it reads."""
    arm_part = {"arm": dataclasses.asdict(arm), **fingerprints}
    corpus_part = _corpus_part(config)
    exclude = config.medical_vocabulary.exclude
    vocabulary = [_file_stamp(config.medical_vocabulary.path), _file_stamp(exclude) if exclude else None]
    keys = {"projection": _hash(arm_part, config.projection, STAGE_VERSION["projection"])}
    keys["words"] = _hash(keys["projection"], config.embeddings.source, vocabulary, STAGE_VERSION["words"])
    keys["activations"] = _hash(arm_part, corpus_part, config.activations, vocabulary, config.seed,
                                STAGE_VERSION["activations"])
    keys["quality"] = _hash(arm_part, corpus_part, config.activations.quality_tokens, STAGE_VERSION["quality"])
    return keys


def _corpus_part(config: StudyConfig) -> dict[str, Any]:
    return {"corpus": dataclasses.asdict(config.corpus), "files": [_file_stamp(p) for p in config.corpus.paths]}


def _hash(*parts: Any) -> str:
    plain = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: str) -> list[Any]:
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


def progress_bar(show: bool, desc: str, unit: str) -> Any:
    """A wrapper for core's `progress=` arguments: a tqdm bar with counts and ETA, or nothing."""
    return (lambda it: tqdm(it, desc=desc, unit=unit, leave=False)) if show else (lambda it: it)
