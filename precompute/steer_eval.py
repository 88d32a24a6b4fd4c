"""`python -m precompute steer-eval`: the paper's causal test (Table 1) as a batch, into the features database.

For each chosen feature of each arm: N seeds; for each seed an unsteered and a steered generation with the
same seed (so the only difference is the steering), each scored by `core.steering.semantic_similarity`
against that arm's own top tokens (the authors scored the base model against the fine-tuned model's tokens).
A feature passes when its mean steered similarity exceeds its mean unsteered similarity; a sample whose text
has no valid word scores NaN and is left out of the means. Results are written as the `steering` stage of
each arm, in the same build-then-rename publish as `run`; the feature set is part of the stage key.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from core import database as db
from core import labels
from core.config import StudyConfig
from core.errors import StudyInputError
from core.feature_ids import FeatureIdError, parse_feature_ids
from core.loading import decoder_fingerprint, load_arm, weights_fingerprint
from core.steering import SamplingSettings, generate_steered, semantic_similarity
from core.database.schema import STEER_FEATURES, STEER_SAMPLES, conform
from precompute.inputs import StudyInputs, progress_bar
from precompute.stage import hash_parts

logger = logging.getLogger(__name__)


def choose_features(con: duckdb.DuckDBPyConnection, config: StudyConfig, arm: str, which: str,
                    fingerprint: str, d_sae: int) -> list[int]:
    """"candidates" (≥ 2 medical matches), "labelled" (humans said medical, for this SAE) or "ID,ID,..." (each
    in 0..d_sae-1, read by the parser the pages use)."""
    if which == "candidates":
        rows = con.execute("SELECT feature FROM feature_words WHERE arm = ? AND is_candidate ORDER BY feature",
                           [arm]).fetchall()
        return [r[0] for r in rows]
    if which == "labelled":
        current, _ = labels.labels_for(Path(config.labels_db), config.name, {arm: fingerprint})
        return sorted(current.loc[(current["arm"] == arm) & (current["label"] == "medical"), "feature"].tolist())
    try:
        return sorted(parse_feature_ids(which, arm, d_sae))
    except FeatureIdError as err:
        raise FeatureIdError(f"--features: {err}; or give candidates or labelled") from err


def evaluate_arm(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded, features: list[int],
                 show_progress: bool) -> dict[str, pa.Table]:
    steer = inputs.config.steering
    samples, per_feature = [], []
    top = con.execute("SELECT feature, token, value FROM top_tokens WHERE arm = ? AND kind = 'top' ORDER BY feature, "
                      "rank", [loaded.name]).df().groupby("feature")
    for feature in progress_bar(show_progress, f"{loaded.name} steering", "feature")(features):
        tokens = top.get_group(feature)
        scores = []
        for sample in range(steer.samples):
            settings = SamplingSettings(temperature=steer.temperature, top_p=steer.top_p,
                                        freq_penalty=steer.freq_penalty, max_new_tokens=steer.max_new_tokens,
                                        seed=inputs.config.seed + sample)
            texts = [generate_steered(loaded, coefficients, steer.prompt, settings).text
                     for coefficients in ({}, {feature: steer.coefficient})]
            sims = [semantic_similarity(t, tokens["token"].tolist(), tokens["value"].tolist(), inputs.embeddings)
                    for t in texts]
            samples.append((feature, sample, settings.seed, *texts, *sims))
            scores.append(sims)
        unsteered, steered = (np.nanmean([s[i] for s in scores]) if any(s[i] == s[i] for s in scores) else np.nan
                              for i in (0, 1))
        per_feature.append((feature, steer.samples, unsteered, steered, bool(steered > unsteered)))
    name = [loaded.name]
    return {
        "steer_features": pa.table({
            "arm": name * len(per_feature), "feature": [r[0] for r in per_feature],
            "coefficient": [steer.coefficient] * len(per_feature), "samples": [r[1] for r in per_feature],
            "mean_unsteered": [r[2] for r in per_feature], "mean_steered": [r[3] for r in per_feature],
            "passing": [r[4] for r in per_feature]}),
        "steer_samples": pa.table({
            "arm": name * len(samples), "feature": [r[0] for r in samples], "sample": [r[1] for r in samples],
            "seed": [r[2] for r in samples], "unsteered_text": [r[3] for r in samples],
            "steered_text": [r[4] for r in samples], "unsteered_similarity": [r[5] for r in samples],
            "steered_similarity": [r[6] for r in samples]}),
    }


def steer_eval(config: StudyConfig, which: str = "candidates", samples: int | None = None,
               device: str | None = None, show_progress: bool = True) -> dict[str, float]:
    """Run the causal test on every arm and publish; returns the seconds per arm."""
    target = Path(config.features_db)
    if db.file_schema_version(target) != db.SCHEMA_VERSION:
        raise StudyInputError(f"no current features database at {target}: run `python -m precompute run` first")
    if samples is not None:
        config = dataclasses.replace(config, steering=dataclasses.replace(config.steering, samples=samples))
    inputs = StudyInputs(config, frozenset(), show_progress=show_progress)
    con, _ = db.open_build(target)
    seconds = {}
    try:
        for arm in config.arms:
            loaded = load_arm(arm, device or config.device)
            features = choose_features(con, config, arm.name, which, decoder_fingerprint(loaded.sae), loaded.d_sae)
            key = hash_parts(weights_fingerprint(loaded.model), weights_fingerprint(loaded.sae), config.steering,
                        config.seed, features)
            start = time.perf_counter()
            tables = evaluate_arm(con, inputs, loaded, features, show_progress)
            seconds[arm.name] = time.perf_counter() - start
            tables = {t.name: conform(t, tables[t.name], "steering") for t in (STEER_FEATURES, STEER_SAMPLES)}
            db.write_stage(con, arm.name, "steering", key, seconds[arm.name], tables)
            del loaded
            gc.collect()
    except BaseException:
        con.close()
        raise
    db.publish(con, target)
    return seconds
