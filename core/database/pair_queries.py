"""Reads of one pair's tables (named by arm_a, arm_b), one typed function each: the divergence stage's rows,
contexts and enriched features, and what the Inspect page reads of the model diff."""

from __future__ import annotations

import duckdb
import pandas as pd


def divergent_contexts(con: duckdb.DuckDBPyConnection, arm_a: str, arm_b: str, limit: int = 20) -> pd.DataFrame:
    """The rows where the pair's next-token predictions part most (mean KL(a ‖ b) over the row's text positions),
    best first: rank, row_index (corpus row), mean_kl, max_kl, max_index (BOS-less token of the text max), tokens,
    kl, logprob_change (log p_b − log p_a of the next token; NULL on the last), boundary (per token: it predicts a
    separator or a document's first tokens; NULL where the stage wrote no kinds)."""
    return con.execute("""
        SELECT rank, row_index, mean_kl, max_kl, max_index, tokens, kl, logprob_change, boundary
        FROM divergence_contexts
        WHERE arm_a = ? AND arm_b = ? ORDER BY rank LIMIT ?""", [arm_a, arm_b, int(limit)]).df()


def divergence_rows(con: duckdb.DuckDBPyConnection, arm_a: str, arm_b: str) -> pd.DataFrame:
    """Every row of the pair's token set: row_index, mean_kl, max_kl, max_index."""
    return con.execute("SELECT row_index, mean_kl, max_kl, max_index FROM divergence_rows WHERE arm_a = ? AND "
                       "arm_b = ? ORDER BY row_index", [arm_a, arm_b]).df()


def enriched_features(con: duckdb.DuckDBPyConnection, arm_a: str, arm_b: str, arm: str, limit: int = 20,
                      min_fired: int = 3) -> pd.DataFrame:
    """`arm`'s features most active on the pair's divergent tokens compared with elsewhere (mean activation
    there minus elsewhere, largest first), among those that fired on at least `min_fired` divergent tokens:
    feature, mean_divergent, mean_elsewhere, ratio (NULL where it never fires elsewhere), fired_divergent,
    fired_elsewhere, top_text."""
    return con.execute("""
        SELECT d.feature, d.mean_divergent, d.mean_elsewhere,
               d.mean_divergent / nullif(d.mean_elsewhere, 0) AS ratio, d.fired_divergent, d.fired_elsewhere,
               w.top_text
        FROM divergence_features d LEFT JOIN feature_words w ON w.arm = d.arm AND w.feature = d.feature
        WHERE d.arm_a = ? AND d.arm_b = ? AND d.arm = ? AND d.fired_divergent >= ?
        ORDER BY d.mean_divergent - d.mean_elsewhere DESC, d.feature LIMIT ?""",
                       [arm_a, arm_b, arm, int(min_fired), int(limit)]).df()


def persisting_partners(con: duckdb.DuckDBPyConnection, arm: str, other: str) -> dict[int, int]:
    """feature of `arm` -> its persisting best match in `other` (model diff status 'persist')."""
    rows = con.execute("SELECT feature, match_feature FROM feature_matches WHERE arm = ? AND match_arm = ? "
                       "AND status = 'persist' AND match_feature IS NOT NULL", [arm, other]).fetchall()
    return {int(f): int(m) for f, m in rows}


def top_texts(con: duckdb.DuckDBPyConnection, arm: str, features: tuple[int, ...]) -> dict[int, str]:
    """feature -> its top tokens as one line (the words stage's top_text), for the features given."""
    rows = con.execute("SELECT feature, top_text FROM feature_words WHERE arm = ? AND list_contains(?, feature)",
                       [arm, list(features)]).fetchall()
    return {int(f): text for f, text in rows}
