"""words: coherence of each feature's top tokens, their medical matches (GloVe, the medical word list), the medical
words among the tokens it fires on most (the activations stage's fired_tokens), and the study's candidate rule."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from core import database as db
from core.coherence import TokenWords, candidate_by, feature_word_scores, fired_word_matches, token_words
from core.database.schema import FEATURE_WORDS
from core.errors import StudyInputError
from core.embeddings import embedding_coverage
from core.loading import LoadedArm
from precompute.inputs import StudyInputs
from precompute.stage import Stage, StageResult


def run_words(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    top = db.read_top_tokens(con, loaded.name, "top")
    k = int(top["rank"].max()) + 1
    top_ids = top["token_id"].to_numpy().reshape(-1, k)
    top_values = top["value"].to_numpy().reshape(-1, k)
    raw, text = inputs.token_strings(loaded)
    vocab = token_words(raw, inputs.embeddings, inputs.medical_words)
    scores = feature_word_scores(top_ids, top_values, vocab)
    fired_ids, llr = _fired(con, loaded.name, len(top_ids))
    fired = fired_word_matches(fired_ids, vocab)
    rule = inputs.config.medical_vocabulary
    by = candidate_by(scores.med_matches, fired.med_matches, llr, rule.candidates, rule.fired_min_llr)
    is_candidate = np.array([b is not None for b in by], dtype=bool)
    words = np.array(vocab.words + [None], dtype=object)[vocab.token_word[top_ids]]  # -1 (no word) -> None
    table = pa.table({
        "arm": pa.array([loaded.name] * len(top_ids)), "feature": np.arange(len(top_ids), dtype=np.int32),
        "coherence": pa.array(scores.coherence, mask=np.isnan(scores.coherence)),
        "n_valid": scores.n_valid.astype(np.int32), "med_matches": scores.med_matches.astype(np.int32),
        "is_candidate": is_candidate, "matched_words": pa.array(scores.matched_words, pa.list_(pa.string())),
        "top_text": pa.array([" | ".join(row) for row in text[top_ids]], pa.string()),
        "top_words": pa.array([sorted({w for w in row if w}) for row in words], pa.list_(pa.string())),
        "fired_med_matches": fired.med_matches.astype(np.int32),
        "fired_matched_words": pa.array(fired.matched_words, pa.list_(pa.string())),
        "candidate_by": pa.array(by.tolist(), pa.string()),
    })
    metrics = _coverage_metrics(top_ids, is_candidate, vocab, inputs.embeddings)
    metrics.update({f"n_candidates_{kind}": float((by == kind).sum()) for kind in ("decoder", "fired", "both")})
    return {"feature_words": table}, metrics


def _fired(con: duckdb.DuckDBPyConnection, arm: str, d_sae: int) -> tuple[np.ndarray, np.ndarray]:
    """The activations stage's most-fired token ids [d_sae, k] (-1 past a feature's last) and medical LLR [d_sae]
    (NaN: never fired), for `arm`."""
    llr = np.full(d_sae, np.nan)
    rows = con.execute("SELECT feature, llr FROM feature_activations WHERE arm = ?", [arm]).df()  # NULL -> NaN
    if rows.empty:
        raise StudyInputError(f"{arm}/words reads the tokens each feature fires on, from the activations stage: "
                              "run it first (e.g. --only activations,words)")
    llr[rows["feature"].to_numpy()] = rows["llr"].to_numpy(dtype=np.float64, na_value=np.nan)
    fired = con.execute("SELECT feature, rank, token_id FROM fired_tokens WHERE arm = ?", [arm]).fetchnumpy()
    k = int(fired["rank"].max()) + 1 if len(fired["rank"]) else 1
    ids = np.full((d_sae, k), -1, dtype=np.int64)
    ids[fired["feature"], fired["rank"]] = fired["token_id"]
    return ids, llr


def _coverage_metrics(top_ids: np.ndarray, is_candidate: np.ndarray, vocab: TokenWords, kv: Any) -> dict[str, float]:
    """Embedding coverage of the top tokens' words, over all features and over medical candidates (the paper's)."""
    metrics = {"n_candidates": float(is_candidate.sum())}
    for scope, ids in (("all", top_ids), ("candidates", top_ids[is_candidate])):
        word_ids = vocab.token_word[ids.ravel()]
        coverage = embedding_coverage([vocab.words[w] for w in word_ids[word_ids >= 0]], kv)
        metrics[f"coverage_unique_{scope}"] = coverage.unique_fraction
        metrics[f"coverage_total_{scope}"] = coverage.total_fraction
    return metrics


# Reads projection's top tokens and the activations stage's fired tokens and LLR from the database, so its key
# chains on both. Version 2: medical words among the fired tokens, and the study's candidate rule.
STAGE = Stage("words", version=2, scope="arm", tables=(FEATURE_WORDS,), run=run_words,
              key_parts=lambda p: (p.earlier["projection"], p.earlier["activations"], p.config.embeddings.source,
                                   p.vocabulary, p.config.medical_vocabulary))
