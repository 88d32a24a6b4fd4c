"""words: coherence of each feature's top tokens and their medical matches (GloVe, the medical word list)."""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from core import database as db
from core.coherence import TokenWords, feature_word_scores, token_words
from core.database.schema import FEATURE_WORDS
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
    words = np.array(vocab.words + [None], dtype=object)[vocab.token_word[top_ids]]  # -1 (no word) -> None
    table = pa.table({
        "arm": pa.array([loaded.name] * len(top_ids)), "feature": np.arange(len(top_ids), dtype=np.int32),
        "coherence": pa.array(scores.coherence, mask=np.isnan(scores.coherence)),
        "n_valid": scores.n_valid.astype(np.int32), "med_matches": scores.med_matches.astype(np.int32),
        "is_candidate": scores.is_candidate, "matched_words": pa.array(scores.matched_words, pa.list_(pa.string())),
        "top_text": pa.array([" | ".join(row) for row in text[top_ids]], pa.string()),
        "top_words": pa.array([sorted({w for w in row if w}) for row in words], pa.list_(pa.string())),
    })
    return {"feature_words": table}, _coverage_metrics(top_ids, scores.is_candidate, vocab, inputs.embeddings)


def _coverage_metrics(top_ids: np.ndarray, is_candidate: np.ndarray, vocab: TokenWords, kv: Any) -> dict[str, float]:
    """Embedding coverage of the top tokens' words, over all features and over medical candidates (the paper's)."""
    metrics = {"n_candidates": float(is_candidate.sum())}
    for scope, ids in (("all", top_ids), ("candidates", top_ids[is_candidate])):
        word_ids = vocab.token_word[ids.ravel()]
        coverage = embedding_coverage([vocab.words[w] for w in word_ids[word_ids >= 0]], kv)
        metrics[f"coverage_unique_{scope}"] = coverage.unique_fraction
        metrics[f"coverage_total_{scope}"] = coverage.total_fraction
    return metrics


# Reads projection's top tokens from the database, so its key chains on projection's.
STAGE = Stage("words", version=1, scope="arm", tables=(FEATURE_WORDS,), run=run_words,
              key_parts=lambda p: (p.earlier["projection"], p.config.embeddings.source, p.vocabulary))
