"""`python -m precompute explain`: one explanation per chosen feature, scored, committed to the explanations
database as it lands (an interrupted run keeps what it finished; a re-run skips those).

Per arm: load the model and SAE (the decoder fingerprint keys each explanation; a fingerprint that is not the
features database's means the database describes another SAE, so nothing is explained), read random corpus
windows once for the non-firing held-out contexts, then for each chunk of features: ask the explainer for all
of them at once (concurrent requests), score each explanation with the judge on its held-out contexts
(core.explain.scoring), and save it.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from tqdm.auto import tqdm

from core import database as db
from core import explanations, labels
from core.config import StudyConfig
from core.errors import StudyInputError
from core.explain import PROMPT_VERSION, explanation_messages, parse_explanation
from core.explain.heldout import ExplainInputs, contexts_of, corpus_windows, split_evidence
from core.explain.scoring import score_explanation
from core.feature_ids import FeatureIdError, parse_feature_ids
from core.loading import LoadedArm, decoder_fingerprint, load_arm
from precompute.explain.backends import ChatBackend, backend_for
from precompute.inputs import StudyInputs

logger = logging.getLogger(__name__)
CHOICES = ("candidates", "emerged", "labelled", "all")
WINDOWS = 128  # random corpus windows read per arm, for non-firing held-out contexts


@dataclass
class ExplainReport:
    explainer: str = ""
    explained: dict[str, int] = field(default_factory=dict)  # arm -> explanations written in this run
    skipped: dict[str, int] = field(default_factory=dict)  # arm -> already explained (this explainer and prompt)
    empty: dict[str, int] = field(default_factory=dict)  # arm -> replies with no explanation in them (not saved)


def check_choice(config: StudyConfig, which: str) -> None:
    """Refuse at once (before any model loads) a choice the study cannot answer."""
    if which == "emerged" and not config.pairs:
        raise StudyInputError("--features emerged needs a model diff: a study of two arms or more, or [[pairs]]")


def choose_features(con: duckdb.DuckDBPyConnection, config: StudyConfig, arm: str, which: str, fingerprint: str,
                    d_sae: int) -> list[int]:
    """candidates | emerged | labelled (any label, this SAE) | all (every feature that fired) | ids "12,40"."""
    check_choice(config, which)
    if which in ("candidates", "emerged", "all"):
        return db.queries.features_to_explain(con, arm, which)
    if which == "labelled":
        current, _ = labels.labels_for(Path(config.labels_db), config.name, {arm: fingerprint})
        return sorted(int(f) for f in current.loc[current["arm"] == arm, "feature"])
    try:
        return sorted(parse_feature_ids(which, arm, d_sae))
    except FeatureIdError as err:
        raise FeatureIdError(f"--features: {err}; or give one of {', '.join(CHOICES)}") from err


def explain_inputs(con: duckdb.DuckDBPyConnection, config: StudyConfig, arm: str, feature: int, windows,
                   token_text) -> ExplainInputs:
    settings = config.explain
    top = contexts_of(db.queries.feature_contexts(con, arm, feature, "top"))
    samples = contexts_of(db.queries.feature_contexts(con, arm, feature, "interval"))
    tokens = db.queries.feature_tokens(con, arm, feature)
    logit_tokens = tokens.loc[tokens["kind"] == "top", "token"].tolist()
    quiet = [windows.context(i, token_text) for i in windows.non_firing(feature, settings.held_out, config.seed)]
    return split_evidence(top, samples, logit_tokens, quiet, settings.top_contexts, settings.samples,
                          settings.held_out)


def explain_arm(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm, chat: ChatBackend,
                features: list[int], fingerprint: str, show_progress: bool) -> tuple[int, int]:
    """Explain, score and save each feature; returns (saved, empty replies)."""
    config = inputs.config
    if not features:
        return 0, 0
    windows = corpus_windows(loaded.model, loaded.sae, loaded.hook_name, inputs.corpus_rows(loaded), WINDOWS,
                             config.activations.window_before + config.activations.window_after + 1, config.seed)
    token_text = inputs.token_strings(loaded)[1]
    saved = empty = 0
    chunk = max(1, getattr(chat, "concurrency", 1))
    bar = tqdm(total=len(features), desc=f"{loaded.name} explain", unit="feature", leave=False,
               disable=not show_progress)
    for start in range(0, len(features), chunk):
        part = features[start:start + chunk]
        held = [explain_inputs(con, config, loaded.name, f, windows, token_text) for f in part]
        replies = chat.complete([explanation_messages(h.evidence) for h in held], config.explain.max_new_tokens)
        for feature, item, reply in zip(part, held, replies):
            text = parse_explanation(reply)
            if not text:
                logger.warning("%s feature %d: the reply held no explanation (%r); not saved", loaded.name, feature,
                               reply[:80])
                empty += 1
                continue
            scores = score_explanation(text, item.activating, item.non_activating, chat.yes_probability)
            explanations.save_explanation(Path(config.explanations_db), config.name, explanations.Explanation(
                loaded.name, feature, fingerprint, text, chat.name, PROMPT_VERSION, scores.simulation,
                scores.detection, scores.n_tokens, scores.n_activating, scores.n_non_activating))
            saved += 1
        bar.update(len(part))
    bar.close()
    return saved, empty


def explain_study(config: StudyConfig, which: str = "candidates", backend: str | None = None,
                  limit: int | None = None, device: str | None = None, show_progress: bool = True,
                  chat: ChatBackend | None = None) -> ExplainReport:
    """Explain the chosen features of every arm (at most `limit` new ones per arm)."""
    target = Path(config.features_db)
    if db.file_schema_version(target) != db.SCHEMA_VERSION:
        raise StudyInputError(f"no current features database at {target}: run `python -m precompute run` first")
    if limit is not None and limit < 1:
        raise StudyInputError("--limit must be at least 1")
    check_choice(config, which)
    chat = chat or backend_for(config.explain, backend, device or config.device)
    report = ExplainReport(explainer=chat.name)
    inputs = StudyInputs(config, frozenset(), show_progress=show_progress)
    with db.connect_read_only(target) as con:
        stored = dict(con.execute("SELECT arm, sae_fingerprint FROM arms").fetchall())
        for arm in config.arms:
            loaded = load_arm(arm, device or config.device, verify=False, generates=False)
            fingerprint = decoder_fingerprint(loaded.sae)
            if stored.get(arm.name) != fingerprint:
                raise StudyInputError(f"arms[{arm.name}]: the SAE at {arm.sae_source} is not the one the features "
                                      "database was computed with; run `python -m precompute run` first")
            features = choose_features(con, config, arm.name, which, fingerprint, loaded.d_sae)
            done = explanations.explained_features(Path(config.explanations_db), config.name, arm.name, fingerprint,
                                                   chat.name, PROMPT_VERSION)
            todo = [f for f in features if f not in done][:limit]
            report.skipped[arm.name] = len(features) - len([f for f in features if f not in done])
            saved, empty = explain_arm(con, inputs, loaded, chat, todo, fingerprint, show_progress)
            report.explained[arm.name], report.empty[arm.name] = saved, empty
            del loaded
            gc.collect()
    return report
