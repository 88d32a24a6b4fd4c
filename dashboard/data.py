"""The study's files beside the features database, for the pages: labels and explanations (never cached: another
tab or a running `explain` may have just written one), the build report's perplexities, the candidate rule in
words, and the guard at the top of every page that needs data. Reads of the features database: dashboard.reads;
the live models: dashboard.live."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import explanations, labels
from core.config import StudyConfig
from core.errors import StudyInputError
from dashboard import reads
from dashboard.reads.connection import features_db_current
from dashboard.study import config_path, features_db_exists, study_config

# --- labels: their own file, never cached (another tab may have just written one) ------------------------

def current_labels() -> pd.DataFrame:
    """Labels of the arms' current SAEs (arm, feature, label, note, id, ...)."""
    config = study_config()
    return labels.labels_for(Path(config.labels_db), config.name, reads.study.fingerprints())[0]


def labels_of_other_saes() -> pd.DataFrame:
    config = study_config()
    return labels.labels_for(Path(config.labels_db), config.name, reads.study.fingerprints())[1]


def save_label(arm: str, feature: int, label: str, note: str) -> int:
    config = study_config()
    fingerprint = reads.study.fingerprints()[arm]
    return labels.save_label(Path(config.labels_db), config.name, arm, feature, fingerprint, label, note)


def undo_label(event_id: int) -> bool:
    return labels.undo(Path(study_config().labels_db), event_id)


def label_history() -> pd.DataFrame:
    config = study_config()
    return labels.history(Path(config.labels_db), config.name)


def feature_label(arm: str, feature: int) -> dict[str, Any] | None:
    frame = current_labels()
    match = frame[(frame["arm"] == arm) & (frame["feature"] == feature)]
    return None if match.empty else match.iloc[0].to_dict()


# --- explanations: their own file beside the labels, never cached (a running `explain` adds to it) ----------

def current_explanations() -> pd.DataFrame:
    """The latest explanation of each feature of the arms' current SAEs (core.explanations); explanations of a
    replaced SAE (another decoder fingerprint) are never among them."""
    config = study_config()
    return explanations.current_explanations(Path(config.explanations_db), config.name, reads.study.fingerprints())


def feature_explanation(arm: str, feature: int) -> dict[str, Any] | None:
    frame = current_explanations()
    match = frame[(frame["arm"] == arm) & (frame["feature"] == feature)]
    return None if match.empty else match.iloc[0].to_dict()


def searched_explanations(text: str, by_meaning: bool = False) -> pd.DataFrame:
    """Current explanations with a `match` column for the Features search (core.explain.search): whole words, or
    meaning (the offline sentence encoder's cosine, kept at or above MEANING_THRESHOLD)."""
    from core.explain.search import match_scores, meaning_scorer, word_scores

    frame = current_explanations()
    if not text.strip() or not len(frame):
        return frame.assign(match=1.0)
    if by_meaning:
        from core.sentence import rank_by_meaning
        scorer = meaning_scorer(rank_by_meaning)
    else:
        scorer = word_scores
    return frame.assign(match=match_scores(text, frame["explanation"].tolist(), scorer))


def explain_command(features: str = "candidates") -> str:
    return f"python -m precompute explain --config {config_path()} --features {features}"


def perplexity_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (arm, held-out text): columns arm, text, perplexity."""
    rows = [{"arm": arm, "text": split, "perplexity": value}
            for arm, splits in report["perplexity"].items() for split, value in splits.items()]
    return pd.DataFrame(rows)


def perplexity_changes(report: dict[str, Any], base: str = "base", finetuned: str = "finetuned") -> dict[str, float]:
    """Held-out text -> relative change of perplexity through fine-tuning (-0.6: 60% lower), from manifest.json."""
    before, after = report["perplexity"][base], report["perplexity"][finetuned]
    return {text: after[text] / before[text] - 1 for text in before if text in after}


def perplexity_kind_frame(report: dict[str, Any]) -> pd.DataFrame | None:
    """One row per kind of predicted token (core.token_kinds: text, separator, first; then all) and held-out text:
    columns kind, text, tokens, base, fine-tuned, change (-0.23: 23% lower), from manifest.json; None for a build
    from before perplexities were split by kind."""
    by_kind, tokens = report.get("perplexity_by_kind"), report.get("tokens_by_kind")
    if by_kind is None or tokens is None:
        return None
    before, after = by_kind["base"], by_kind["finetuned"]
    rows = [{"kind": kind, "text": split, "tokens": tokens[split][kind], "base": before[split][kind],
             "fine-tuned": after[split][kind],
             "change": None if before[split][kind] is None or after[split][kind] is None
             else after[split][kind] / before[split][kind] - 1}
            for kind in ("text", "separator", "first", "all") for split in ("medical", "general") if split in before]
    return pd.DataFrame(rows)


LabelWriteError = labels.LabelWriteError

CANDIDATE_HELP = ("decoder: ≥ 2 medical words among its top logit-lens tokens (W_dec @ W_U, the paper's rule); "
                  "fired: ≥ 2 medical words among the 10 tokens it fires on most, and it fires on medical tokens "
                  "well above their share of the corpus (medical LLR); both: each rule alone makes it one")


def candidate_rule_text(config: StudyConfig) -> str:
    """The study's medical-candidate rule in words (core.config.VocabularyConfig.candidates)."""
    vocabulary = config.medical_vocabulary
    decoder = "≥ 2 medical words among its top tokens by the decoder (W_dec @ W_U, the paper's rule)"
    fired = (f"≥ 2 medical words among the 10 tokens it fires on most, with a medical LLR ≥ "
             f"{vocabulary.fired_min_llr:g} (it fires on medical tokens at least {math.exp(vocabulary.fired_min_llr):.1f}× "
             "their share of the corpus)")
    return {"decoder": decoder, "fired": fired, "either": f"{decoder}, or {fired}"}[vocabulary.candidates]


def require_database() -> StudyConfig:
    """The guard at the top of every page that needs data: the config, or a message and st.stop()."""
    try:
        config = study_config()
    except StudyInputError as err:
        st.error(f"The study config cannot be read: {err}")
        st.stop()
    command = f"python -m precompute run --config {config_path()}"
    if not features_db_exists(config):
        st.info(f"No features database yet at `{config.features_db}`. Build it with `{command}` (or `make demo`).")
        st.stop()
    if not features_db_current(config):
        st.warning(f"The features database `{config.features_db}` was written by another version of this tool. "
                   f"Rebuild it with `{command} --fresh`.")
        st.stop()
    return config


def paper_tables() -> dict[str, pd.DataFrame]:
    """Our Table 2, medical-candidate counts and Figure 2 moments, each beside the paper's numbers."""
    from core import paper

    labels_now = current_labels()
    table2 = reads.features.coherence_table(labels_now)
    medical_scope = table2["scope"] != "all features"
    table2["paper mean"] = [paper.COHERENCE_MEDICAL.get(a, {}).get("mean") if m else paper.COHERENCE_ALL_MEAN.get(a)
                            for a, m in zip(table2["arm"], medical_scope)]
    table2["paper median"] = [paper.COHERENCE_MEDICAL.get(a, {}).get("median") if m else None
                              for a, m in zip(table2["arm"], medical_scope)]
    overview = reads.study.arm_overview()
    candidates = overview[["arm", "features", "candidates"]].assign(
        share=lambda f: f["candidates"] / f["features"],
        **{"paper count": lambda f: f["arm"].map(lambda a: paper.MEDICAL_FEATURES.get(a, (None, None))[0]),
           "paper share": lambda f: f["arm"].map(lambda a: paper.MEDICAL_FEATURES.get(a, (None, None))[1])})
    moments = reads.features.candidate_activation_moments().assign(
        **{"paper mean": lambda f: f["arm"].map(lambda a: paper.MEDICAL_ACTIVATIONS.get(a, {}).get("mean")),
           "paper var": lambda f: f["arm"].map(lambda a: paper.MEDICAL_ACTIVATIONS.get(a, {}).get("var"))})
    return {"table2": table2, "candidates": candidates, "moments": moments, "source": paper.SOURCE}
