"""`python -m precompute steer-eval`: the paper's causal test (Table 1) as a batch, into the features database.

For each chosen feature of each arm: N seeds; for each seed an unsteered and a steered generation with the
same seed (so the only difference is the steering), and one with each of the feature's random directions of the
same norm (`core.steer_controls`, seeded by the study's seed, the feature and the direction; `steering.
random_directions`, 5 by default, 0 for none). Each text is scored by `core.steer_scores.meaning_scores` with the
config's `steering.measure` (the sentence encoder by default, GloVe as an option) against what the study's
candidate rule read (`core.steer_scores.scoring_target`: the arm's own top logit-lens tokens, as the paper did, or
the tokens the feature fires on most), and the unsteered and steered texts by their perplexity under the
unsteered model (fluency). The verdict is `core.steer_controls.steering_verdict`: `passing` is the paper's rule
(mean steered similarity > mean unsteered), `passing_controlled` also needs the steered mean above the random
directions' (`beats_random`). The measure and target are stored with every feature's row. Results are written as
the `steering` stage of each arm, in the same build-then-rename publish as `run`; the feature set is part of the
stage key.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from core import database as db
from core import labels
from core.config import SteeringConfig, StudyConfig
from core.database.queries import steering_targets
from core.database.schema import STEER_FEATURES, STEER_RANDOM_SAMPLES, STEER_SAMPLES, conform
from core.errors import StudyInputError
from core.feature_ids import FeatureIdError, parse_feature_ids
from core.loading import decoder_fingerprint, load_arm, weights_fingerprint
from core.steer_controls import (SteeringVerdict, direction_seed, generate_along, nan_mean, random_directions,
                                 steering_verdict)
from core.steer_scores import meaning_scores, perplexity
from core.steering import SamplingSettings, generate_steered, steering_vector
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


SAMPLE_COLUMNS = ("feature", "sample", "seed", "unsteered_text", "steered_text", "unsteered_similarity",
                  "steered_similarity", "unsteered_perplexity", "steered_perplexity")
RANDOM_COLUMNS = ("feature", "sample", "direction", "direction_seed", "text", "similarity")
STEER_TABLES = (STEER_FEATURES, STEER_SAMPLES, STEER_RANDOM_SAMPLES)


def evaluate_feature(loaded, feature: int, target: pd.DataFrame, steer: SteeringConfig, seed: int,
                     kv) -> tuple[list[tuple], list[tuple]]:
    """Rows of steer_samples (SAMPLE_COLUMNS), one per seed, and of steer_random_samples (RANDOM_COLUMNS), one per
    seed and random direction: every text scored by `steer.measure` against `target` (token, value: what the
    study's rule read), the unsteered and steered ones also by their perplexity under the unsteered model."""
    vector = steering_vector(loaded.sae.W_dec, {feature: steer.coefficient})
    directions = random_directions(vector, steer.random_directions, seed, (feature,))
    seeds = [direction_seed(seed, (feature,), j) for j in range(steer.random_directions)]
    rows, random_rows = [], []
    for sample in range(steer.samples):
        settings = SamplingSettings(temperature=steer.temperature, top_p=steer.top_p,
                                    freq_penalty=steer.freq_penalty, max_new_tokens=steer.max_new_tokens,
                                    seed=seed + sample, special_tokens=steer.special_tokens)
        pair = [generate_steered(loaded, coefficients, steer.prompt, settings)
                for coefficients in ({}, {feature: steer.coefficient})]
        controls = [generate_along(loaded, direction, steer.prompt, settings) for direction in directions]
        texts = [g.text for g in pair + controls]
        sims = meaning_scores(texts, target["token"].tolist(), target["value"].tolist(), steer.measure, kv)
        fluency = [perplexity(loaded.model, g.prompt_ids, g.token_ids) for g in pair]
        rows.append((feature, sample, settings.seed, *texts[:2], *sims[:2], *fluency))
        random_rows += [(feature, sample, j, seeds[j], texts[2 + j], sims[2 + j]) for j in range(len(controls))]
    return rows, random_rows


def feature_verdicts(samples: pd.DataFrame, randoms: pd.DataFrame) -> pd.DataFrame:
    """Per feature (sorted): samples, the means and perplexities, and `core.steer_controls.steering_verdict`'s
    rule columns (the paper's `passing`, the control's `beats_random`, `random_beaten`, `passing_controlled`)."""
    out = []
    for feature, mine in samples.groupby("feature", sort=True):
        theirs = randoms[randoms["feature"] == feature].pivot(index="direction", columns="sample", values="similarity")
        verdict = steering_verdict(mine["unsteered_similarity"].tolist(), mine["steered_similarity"].tolist(),
                                   theirs.reindex(columns=mine["sample"]).to_numpy(dtype=np.float64))
        out.append({"feature": feature, "samples": len(mine), **dataclasses.asdict(verdict),
                    "random_directions": len(theirs),
                    "mean_unsteered_perplexity": nan_mean(mine["unsteered_perplexity"]),
                    "mean_steered_perplexity": nan_mean(mine["steered_perplexity"])})
    columns = ["feature", "samples", *(f.name for f in dataclasses.fields(SteeringVerdict)), "random_directions",
               "mean_unsteered_perplexity", "mean_steered_perplexity"]
    return pd.DataFrame(out, columns=columns).astype({"beats_random": "boolean", "passing_controlled": "boolean",
                                                      "random_beaten": "Int32", "random_directions": "int32"})


def evaluate_arm(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded, features: list[int],
                 show_progress: bool) -> dict[str, pa.Table]:
    config = inputs.config
    steer = config.steering
    kv = inputs.embeddings if steer.measure == "glove" else None  # the sentence measure needs no word vectors
    targets = steering_targets(con, loaded.name, config.medical_vocabulary.candidates, features).groupby("feature")
    none = pd.DataFrame(columns=["target", "token", "value"])  # a feature with no tokens at all: NaN scores
    rows, random_rows, kinds = [], [], {}
    for feature in progress_bar(show_progress, f"{loaded.name} steering", "feature")(features):
        target = targets.get_group(feature) if feature in targets.groups else none
        kinds[feature] = target["target"].iloc[0] if len(target) else "decoder"
        mine, theirs = evaluate_feature(loaded, feature, target, steer, config.seed, kv)
        rows.extend(mine)
        random_rows.extend(theirs)
    samples = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)).astype({"unsteered_similarity": float,
                                                                       "steered_similarity": float})
    randoms = pd.DataFrame(random_rows, columns=list(RANDOM_COLUMNS)).astype({"similarity": float,
                                                                             "direction_seed": "int64"})
    per_feature = feature_verdicts(samples, randoms)
    per_feature = per_feature.assign(arm=loaded.name, coefficient=steer.coefficient, measure=steer.measure,
                                     target=per_feature["feature"].map(kinds))
    return {"steer_features": pa.Table.from_pandas(per_feature, preserve_index=False),
            "steer_samples": pa.Table.from_pandas(samples.assign(arm=loaded.name), preserve_index=False),
            "steer_random_samples": pa.Table.from_pandas(randoms.assign(arm=loaded.name), preserve_index=False)}


def steer_eval(config: StudyConfig, which: str = "candidates", samples: int | None = None,
               device: str | None = None, show_progress: bool = True, measure: str | None = None,
               random_directions: int | None = None) -> dict[str, float]:
    """Run the causal test on every arm and publish; returns the seconds per arm. `samples`, `measure` and
    `random_directions` replace the config's steering.samples, steering.measure and steering.random_directions."""
    target = Path(config.features_db)
    if db.file_schema_version(target) != db.SCHEMA_VERSION:
        raise StudyInputError(f"no current features database at {target}: run `python -m precompute run` first")
    given = {"samples": samples, "measure": measure, "random_directions": random_directions}
    given = {name: value for name, value in given.items() if value is not None}
    if given:
        config = dataclasses.replace(config, steering=dataclasses.replace(config.steering, **given))
    inputs = StudyInputs(config, frozenset(), show_progress=show_progress)
    con, _ = db.open_build(target)
    seconds = {}
    try:
        for arm in config.arms:
            loaded = load_arm(arm, device or config.device)
            features = choose_features(con, config, arm.name, which, decoder_fingerprint(loaded.sae), loaded.d_sae)
            key = hash_parts(weights_fingerprint(loaded.model), weights_fingerprint(loaded.sae), config.steering,
                             config.seed, features, config.medical_vocabulary.candidates)
            start = time.perf_counter()
            tables = evaluate_arm(con, inputs, loaded, features, show_progress)
            seconds[arm.name] = time.perf_counter() - start
            tables = {t.name: conform(t, tables[t.name], "steering") for t in STEER_TABLES}
            db.write_stage(con, arm.name, "steering", key, seconds[arm.name], tables)
            del loaded
            gc.collect()
    except BaseException:
        con.close()
        raise
    db.publish(con, target)
    return seconds
