"""The one module that finds and reads the study's files for the pages (cached, never stale)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import streamlit as st

from core import database as db
from core import explanations, labels
from core.config import StudyConfig, load_config
from core.errors import StudyInputError

DEFAULT_CONFIG = "configs/demo.toml"


def config_path() -> str:
    """`--config` after `streamlit run dashboard/app.py --`, else $SAE_DIFF_CONFIG, else the demo."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=os.environ.get("SAE_DIFF_CONFIG", DEFAULT_CONFIG))
    return parser.parse_known_args(sys.argv[1:])[0].config


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False)
def _load_config(path: str, mtime: float) -> StudyConfig:
    return load_config(path)


def study_config() -> StudyConfig:
    """The study config; raises StudyInputError with the reason when it cannot be read."""
    path = config_path()
    return _load_config(path, _mtime(Path(path)))


@st.cache_data(show_spinner=False)
def _read_json(path: str, mtime: float) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def study_has_pair() -> bool:
    """Whether the study declares a pair (its first page is then What changed); False when the config is unreadable,
    which the Overview reports."""
    try:
        return bool(study_config().pairs)
    except StudyInputError:
        return False


def build_report(config: StudyConfig) -> dict[str, Any] | None:
    """The demo build's manifest.json (beside the features database), or None for a study without one."""
    path = config.output_dir / "manifest.json"
    return _read_json(str(path), _mtime(path))


def features_db_exists(config: StudyConfig) -> bool:
    return Path(config.features_db).is_file()


def features_db_version(config: StudyConfig) -> tuple[float, int]:
    """Changes whenever a new database is published (a rename gives a new inode): the key of cached queries."""
    try:
        stat = Path(config.features_db).stat()
    except OSError:
        return (0.0, 0)
    return (stat.st_mtime, stat.st_ino)


def features_db_current(config: StudyConfig) -> bool:
    """The database exists and has this code's schema (else the page shows how to rebuild it)."""
    try:  # through the shared connection: a second connect() to the path could see the previous file
        with _connection(config.features_db, features_db_version(config)).cursor() as cursor:
            return db.schema_version(cursor) == db.SCHEMA_VERSION
    except duckdb.Error:
        return False


def describe_token_set(sets: pd.DataFrame, name: str | None, detail: bool = False) -> str:
    """A token set in words, from `queries.token_sets` rows: "the whole corpus (59,563 tokens)", or with
    detail its mix: "...: heldout_general 235 rows (50%), heldout_medical 234 rows (50%)"."""
    rows = sets[sets["token_set"] == name]
    if rows.empty:
        return "tokens not recorded (rebuild the database)"
    kind = "the whole corpus" if name == "corpus" else "an even sample of the corpus"
    text = f"{kind} ({int(rows['n_tokens'].sum()):,} tokens)"
    if not detail:
        return text
    total = rows["n_rows"].sum()
    return text + ": " + ", ".join(f"{r.source} {int(r.n_rows):,} rows ({r.n_rows / total:.0%})"
                                   for r in rows.itertuples())


def token_set_text(name: str | None, detail: bool = False) -> str:
    """`describe_token_set` on this study's database."""
    return describe_token_set(query("token_sets"), name, detail)


def matching_export(pair: tuple[str, str], fmt: str) -> bytes:
    """One pair's whole matching (`queries.matching_export`) as CSV (partner lists joined by ";") or Parquet."""
    frame = query("matching_export", pair)
    if fmt == "parquet":
        return frame.to_parquet(index=False)
    flat = frame.assign(**{c: frame[c].map(lambda xs: ";".join(f"{x:.4g}" if isinstance(x, float) else str(x)
                                                              for x in xs)) for c in ("partners", "partner_corrs")})
    return flat.to_csv(index=False).encode()


def pair_label(pair: tuple[str, str], roles: dict[tuple[str, str], dict[str, str | None]]) -> str:
    """"base → finetuned", or "base → base_resae (control of finetuned)" for a control pair (`pair_controls`)."""
    controls = roles.get(tuple(pair), {}).get("controls")
    return f"{pair[0]} → {pair[1]}" + (f" (control of {controls})" if controls else "")


def arm_overview(config: StudyConfig) -> pd.DataFrame:
    """Per arm: features, medical candidates, coherence mean / median, dead features, L0, EV, CE recovered."""
    return query("arm_overview")


# --- the features database, read-only: one connection per published file, one cursor per query ----------

class _Connections:
    """One read-only connection per database path, replaced when a new file is published.

    DuckDB keeps one database instance per path in a process: while a connection to the old file is open, a new
    connect() to the same path would return the old file's content. So the old one is closed first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[tuple[float, int], duckdb.DuckDBPyConnection]] = {}

    def get(self, path: str, version: tuple[float, int]) -> duckdb.DuckDBPyConnection:
        with self._lock:
            held = self._open.get(path)
            if held is not None and held[0] == version:
                return held[1]
            if held is not None:
                held[1].close()
            con = db.connect_read_only(Path(path))
            self._open[path] = (version, con)
            return con


@st.cache_resource(show_spinner=False)
def _connections() -> _Connections:
    return _Connections()


def _connection(path: str, version: tuple[float, int]) -> duckdb.DuckDBPyConnection:
    return _connections().get(path, version)


@st.cache_data(show_spinner=False, max_entries=512)
def _cached_query(name: str, path: str, version: tuple[float, int], args: tuple) -> Any:
    # A DuckDB connection is not thread-safe; a cursor is a connection of its own on the same database.
    with _connection(path, version).cursor() as cursor:
        return getattr(db.queries, name)(cursor, *args)


def query(name: str, *args: Any) -> Any:
    """Run `core.database.queries.<name>(con, *args)` on the current study's database, cached until a new
    database is published (the key includes the file's version)."""
    config = study_config()
    return _cached_query(name, config.features_db, features_db_version(config), args)


def arm_names() -> list[str]:
    return query("arms")["arm"].tolist()


def d_sae(arm: str) -> int:
    """The number of features of `arm`'s SAE."""
    return int(query("arms").set_index("arm").loc[arm, "d_sae"])


def widths() -> dict[str, int]:
    """arm -> d_sae, in the study's order of arms: what a feature id of each arm must fall below."""
    frame = query("arms")
    return {arm: int(d_sae) for arm, d_sae in zip(frame["arm"], frame["d_sae"])}


def fingerprints() -> dict[str, str]:
    """arm -> decoder fingerprint of the SAE the database was computed with (labels are keyed by it)."""
    frame = query("arms")
    return dict(zip(frame["arm"], frame["sae_fingerprint"]))


# --- labels: their own file, never cached (another tab may have just written one) ------------------------

def current_labels() -> pd.DataFrame:
    """Labels of the arms' current SAEs (arm, feature, label, note, id, ...)."""
    config = study_config()
    return labels.labels_for(Path(config.labels_db), config.name, fingerprints())[0]


def labels_of_other_saes() -> pd.DataFrame:
    config = study_config()
    return labels.labels_for(Path(config.labels_db), config.name, fingerprints())[1]


def save_label(arm: str, feature: int, label: str, note: str) -> int:
    config = study_config()
    return labels.save_label(Path(config.labels_db), config.name, arm, feature, fingerprints()[arm], label, note)


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
    return explanations.current_explanations(Path(config.explanations_db), config.name, fingerprints())


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


def candidate_word_table() -> pd.DataFrame:
    """One row per medical word in any arm's candidates: per arm, in how many candidates it is and how many
    would stop being candidates without it; most frequent first (core.database.queries.candidate_words)."""
    words = query("candidate_words")
    if words.empty:
        return words
    wide = words.pivot(index="word", columns="arm", values=["candidates", "needed_by"]).fillna(0).astype(int)
    arms = [arm for arm in arm_names() if arm in set(words["arm"])]
    wide = wide[[(what, arm) for arm in arms for what in ("candidates", "needed_by")]]
    wide.columns = [f"{arm} {'candidates' if what == 'candidates' else 'needing it'}" for what, arm in wide.columns]
    total = wide[[f"{arm} candidates" for arm in arms]].sum(axis=1).sort_values(ascending=False, kind="stable")
    return wide.loc[total.index].reset_index()


LabelWriteError = labels.LabelWriteError
LABELS = labels.LABELS
FeatureFilter = db.queries.FeatureFilter
SORTABLE = db.queries.SORTABLE
LABEL_STATUSES = db.queries.LABEL_STATUSES

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
    table2 = query("coherence_table", labels_now)
    medical_scope = table2["scope"] != "all features"
    table2["paper mean"] = [paper.COHERENCE_MEDICAL.get(a, {}).get("mean") if m else paper.COHERENCE_ALL_MEAN.get(a)
                            for a, m in zip(table2["arm"], medical_scope)]
    table2["paper median"] = [paper.COHERENCE_MEDICAL.get(a, {}).get("median") if m else None
                              for a, m in zip(table2["arm"], medical_scope)]
    overview = arm_overview(study_config())
    candidates = overview[["arm", "features", "candidates"]].assign(
        share=lambda f: f["candidates"] / f["features"],
        **{"paper count": lambda f: f["arm"].map(lambda a: paper.MEDICAL_FEATURES.get(a, (None, None))[0]),
           "paper share": lambda f: f["arm"].map(lambda a: paper.MEDICAL_FEATURES.get(a, (None, None))[1])})
    moments = query("candidate_activation_moments").assign(
        **{"paper mean": lambda f: f["arm"].map(lambda a: paper.MEDICAL_ACTIVATIONS.get(a, {}).get("mean")),
           "paper var": lambda f: f["arm"].map(lambda a: paper.MEDICAL_ACTIVATIONS.get(a, {}).get("var"))})
    return {"table2": table2, "candidates": candidates, "moments": moments, "source": paper.SOURCE}


# --- live models for steering: loaded once per process, shared by sessions (core.steering locks them) ----

def loaded_arm(arm_name: str) -> Any:
    """The arm's model and SAE as the config points to them now (a changed path or replaced files load anew)."""
    arm = study_config().arm(arm_name)
    return _load_arm(arm, study_config().device, _folder_stamp(arm.model), _folder_stamp(arm.sae_path))


def _folder_stamp(path: str | None) -> float | None:
    """The newest modification time in a local folder (None for a hub name): part of the cache key."""
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        return None
    return max((_mtime(f) for f in folder.iterdir()), default=_mtime(folder))


@st.cache_resource(show_spinner="Loading the model and its SAE…", max_entries=4)
def _load_arm(arm: Any, device: str, model_stamp: float | None, sae_stamp: float | None) -> Any:
    from core.loading import load_arm

    return load_arm(arm, device)


@st.cache_resource(show_spinner=False, max_entries=4)
def _decoder_fingerprint(_loaded: Any, arm: Any, model_stamp: float | None, sae_stamp: float | None) -> str:
    from core.loading import decoder_fingerprint

    return decoder_fingerprint(_loaded.sae)


def sae_mismatch(arm_name: str) -> str | None:
    """Why the SAE loaded for `arm_name` must not be steered with this database's numbers, or None when its
    decoder fingerprint is the one the database was computed with (labels take the same care)."""
    arm = study_config().arm(arm_name)
    stamps = (_folder_stamp(arm.model), _folder_stamp(arm.sae_path))
    loaded = _decoder_fingerprint(loaded_arm(arm_name), arm, *stamps)
    stored = fingerprints().get(arm_name)
    if loaded == stored:
        return None
    return (f"The SAE of {arm_name} at `{arm.sae_source}` is not the one the features database was computed with "
            f"(decoder fingerprint {loaded[:12]}… loaded, {str(stored)[:12]}… stored): its top tokens, max "
            f"activation and typical norm belong to another SAE. Re-run `python -m precompute run --config "
            f"{config_path()}`, or point the config back to the SAE the database was built from.")


@st.cache_resource(show_spinner="Loading word embeddings…")
def embeddings() -> Any:
    from core.embeddings import load_embeddings

    config = study_config()
    return load_embeddings(config.embeddings.source, Path(config.embeddings.cache_dir))


def typical_norm(arm_name: str) -> tuple[float, int] | None:
    """(median activation norm at the SAE's hook, tokens it was measured on): the quality stage's, BOS left
    out; None for a database built before it was stored."""
    metrics = query("stage_metrics", arm_name, "quality")
    if "median_activation_norm" not in metrics:
        return None
    return metrics["median_activation_norm"], int(metrics.get("n_tokens", 0))


# --- one pair's reads (core.database.pair_queries): the divergence stage, and the model diff Inspect reads ----

@st.cache_data(show_spinner=False, max_entries=128)
def _pair_read(name: str, path: str, version: tuple[float, int], args: tuple) -> Any:
    with _connection(path, version).cursor() as cursor:
        return getattr(db.pair_queries, name)(cursor, *args)


def _read_pair(name: str, *args: Any, missing: Any = None) -> Any:
    """pair_queries.<name>(con, *args) on this study's database, cached until a new one is published; `missing`
    for a database built without the stage that writes the table."""
    config = study_config()
    try:
        return _pair_read(name, config.features_db, features_db_version(config), args)
    except duckdb.CatalogException:
        return missing


def persisting_partners(arm: str, other: str) -> dict[int, int]:
    """feature of `arm` -> its persisting match in `other` (the model diff's status 'persist', best match); empty
    when the database has no model diff for this pair. One direction: a many-to-one match differs per side."""
    return _read_pair("persisting_partners", arm, other, missing={})


def top_texts(arm: str, features: list[int]) -> dict[int, str]:
    """feature -> its top tokens as one line (the words stage's top_text), for the features given."""
    return _read_pair("top_texts", arm, tuple(sorted(set(features))), missing={})


def divergent_contexts(arm_a: str, arm_b: str, limit: int = 20) -> pd.DataFrame | None:
    """pair_queries.divergent_contexts; None when the database has no divergence stage."""
    return _read_pair("divergent_contexts", arm_a, arm_b, limit)


def divergence_rows(arm_a: str, arm_b: str) -> pd.DataFrame | None:
    return _read_pair("divergence_rows", arm_a, arm_b)


def enriched_features(arm_a: str, arm_b: str, arm: str, limit: int = 20) -> pd.DataFrame | None:
    return _read_pair("enriched_features", arm_a, arm_b, arm, limit)


def row_sources(rows: list[int]) -> list[str]:
    """The corpus source (file name without suffix, or the dataset) each corpus row comes from."""
    from core.corpus import corpus_sources

    ends, names, total = [], [], 0
    for name, n in corpus_sources(study_config().corpus):
        total += n
        ends.append(total)
        names.append(name)
    return [next((name for name, end in zip(names, ends) if row < end), "?") for row in rows]


def example_text(limit: int = 400) -> str:
    """A text to start from: the first line of the study's last corpus file (the demo's held-out medical text),
    cut at a word before `limit` characters; a fixed sentence for a hub corpus."""
    corpus = study_config().corpus
    fallback = "The patient was admitted with chest pain and shortness of breath."
    if corpus.kind != "text_files":
        return fallback
    try:
        with open(corpus.paths[-1], encoding="utf-8") as handle:
            line = next((line.strip() for line in handle if line.strip()), "")
    except OSError:
        return fallback
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0]


@st.cache_data(show_spinner="Running both models…", max_entries=32)
def _inspect(text: str, ids: tuple[int, ...] | None, base: str, finetuned: str, stamps: tuple) -> Any:
    from core.inspect import inspect_ids, inspect_text

    if ids is not None:
        return inspect_ids(loaded_arm(base), loaded_arm(finetuned), ids, text)
    return inspect_text(loaded_arm(base), loaded_arm(finetuned), text)


def _stamps(*names: str) -> tuple:
    arms = [study_config().arm(name) for name in names]
    return tuple((a.model, _folder_stamp(a.model), a.sae_source, _folder_stamp(a.sae_path)) for a in arms)


def inspect(text: str, base: str, finetuned: str, ids: list[int] | None = None) -> Any:
    """core.inspect.inspect_text on the two arms' live models (inspect_ids when the token ids are given: a corpus
    row as the precompute read it), cached per text while their files stay the same."""
    return _inspect(text, None if ids is None else tuple(ids), base, finetuned, _stamps(base, finetuned))


@st.cache_data(show_spinner="Reading the corpus row…", max_entries=64)
def _corpus_row(row: int, arm: str, corpus_key: str, stamps: tuple) -> tuple[list[int], str]:
    from core.corpus import corpus_row
    from core.words import new_token_texts

    tokenizer = loaded_arm(arm).model.tokenizer
    ids = corpus_row(study_config().corpus, tokenizer, row).tolist()
    return ids, "".join(new_token_texts(tokenizer, ids[:1], ids[1:]))


def corpus_row(row: int, arm: str) -> tuple[list[int], str]:
    """Corpus row `row` as `arm`'s tokenizer packs it for the precompute: its token ids (BOS first) and its text
    (BOS left out). Raises StudyInputError for a row the corpus does not have."""
    corpus = study_config().corpus
    files = tuple((path, _mtime(Path(path))) for path in corpus.paths)
    return _corpus_row(int(row), arm, json.dumps([str(corpus), files]), _stamps(arm))
