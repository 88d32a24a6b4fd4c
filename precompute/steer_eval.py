"""`python -m precompute steer-eval`: the paper's causal test (Table 1) as a batch, into the features database.

For each chosen feature of each arm: N seeds; for each seed an unsteered and a steered generation with the
same seed (so the only difference is the steering), each scored by `core.steer_scores.meaning_scores` with the
config's `steering.measure` (the sentence encoder by default, GloVe as an option) against that arm's own top
tokens (the authors scored the base model against the fine-tuned model's tokens), and by its perplexity under the
unsteered model (fluency). A feature passes when its mean steered similarity exceeds its mean unsteered
similarity; a sample with no score (NaN: nothing to compare) is left out of the means. The measure is stored with
every feature's row. Results are written as the `steering` stage of
each arm, in the same build-then-rename publish as `run`; the feature set is part of the stage key.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from core import database as db
from core import labels
from core.config import SteeringConfig, StudyConfig
from core.errors import StudyInputError
from core.feature_ids import FeatureIdError, parse_feature_ids
from core.loading import decoder_fingerprint, load_arm, weights_fingerprint
from core.steer_scores import meaning_scores, perplexity
from core.steering import SamplingSettings, generate_steered
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


SAMPLE_COLUMNS = ("feature", "sample", "seed", "unsteered_text", "steered_text", "unsteered_similarity",
                  "steered_similarity", "unsteered_perplexity", "steered_perplexity")


def evaluate_feature(loaded, feature: int, top: pd.DataFrame, steer: SteeringConfig, seed: int, kv) -> list[tuple]:
    """One row per seed (SAMPLE_COLUMNS): the unsteered and steered texts, each scored by `steer.measure` against
    the feature's top tokens and by its perplexity under the unsteered model."""
    rows = []
    for sample in range(steer.samples):
        settings = SamplingSettings(temperature=steer.temperature, top_p=steer.top_p,
                                    freq_penalty=steer.freq_penalty, max_new_tokens=steer.max_new_tokens,
                                    seed=seed + sample, special_tokens=steer.special_tokens)
        pair = [generate_steered(loaded, coefficients, steer.prompt, settings)
                for coefficients in ({}, {feature: steer.coefficient})]
        texts = [g.text for g in pair]
        sims = meaning_scores(texts, top["token"].tolist(), top["value"].tolist(), steer.measure, kv)
        fluency = [perplexity(loaded.model, g.prompt_ids, g.token_ids) for g in pair]
        rows.append((feature, sample, settings.seed, *texts, *sims, *fluency))
    return rows


def _mean(values: pd.Series) -> float:
    """Mean without the NaN (no score) samples; NaN when every sample is NaN."""
    return float(values.mean()) if values.notna().any() else float("nan")


def evaluate_arm(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded, features: list[int],
                 show_progress: bool) -> dict[str, pa.Table]:
    steer = inputs.config.steering
    kv = inputs.embeddings if steer.measure == "glove" else None  # the sentence measure needs no word vectors
    top = con.execute("SELECT feature, token, value FROM top_tokens WHERE arm = ? AND kind = 'top' ORDER BY feature, "
                      "rank", [loaded.name]).df().groupby("feature")
    rows = []
    for feature in progress_bar(show_progress, f"{loaded.name} steering", "feature")(features):
        rows += evaluate_feature(loaded, feature, top.get_group(feature), steer, inputs.config.seed, kv)
    samples = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS)).astype({"unsteered_similarity": float,
                                                                       "steered_similarity": float})
    per_feature = samples.groupby("feature", sort=True).agg(
        samples=("sample", "size"), mean_unsteered=("unsteered_similarity", _mean),
        mean_steered=("steered_similarity", _mean), mean_unsteered_perplexity=("unsteered_perplexity", _mean),
        mean_steered_perplexity=("steered_perplexity", _mean)).reset_index()
    per_feature["passing"] = per_feature["mean_steered"] > per_feature["mean_unsteered"]  # NaN never passes
    per_feature = per_feature.assign(arm=loaded.name, coefficient=steer.coefficient, measure=steer.measure)
    return {"steer_features": pa.Table.from_pandas(per_feature, preserve_index=False),
            "steer_samples": pa.Table.from_pandas(samples.assign(arm=loaded.name), preserve_index=False)}


def steer_eval(config: StudyConfig, which: str = "candidates", samples: int | None = None,
               device: str | None = None, show_progress: bool = True, measure: str | None = None) -> dict[str, float]:
    """Run the causal test on every arm and publish; returns the seconds per arm. `samples` and `measure` replace
    the config's steering.samples and steering.measure."""
    target = Path(config.features_db)
    if db.file_schema_version(target) != db.SCHEMA_VERSION:
        raise StudyInputError(f"no current features database at {target}: run `python -m precompute run` first")
    if samples is not None:
        config = dataclasses.replace(config, steering=dataclasses.replace(config.steering, samples=samples))
    if measure is not None:
        config = dataclasses.replace(config, steering=dataclasses.replace(config.steering, measure=measure))
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
