"""The reads of the exports, one arm or one pair at a time, every statement with `?` parameters. Bulk reads (one
frame per table for a whole arm) where the dashboard's reads are one feature each."""

from __future__ import annotations

import duckdb
import pandas as pd


def arm_row(con: duckdb.DuckDBPyConnection, arm: str) -> dict | None:
    """The arm's row of `arms` (model, sae_source, hook_name, d_sae, sae_fingerprint, ...), or None."""
    frame = con.execute("SELECT * FROM arms WHERE arm = ?", [arm]).df()
    return None if frame.empty else frame.iloc[0].to_dict()


def arm_names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT arm FROM arms ORDER BY position").fetchall()]


def study_row(con: duckdb.DuckDBPyConnection) -> dict:
    """name, description, hist_edges, interval_edges of the study."""
    row = con.execute("SELECT name, description, hist_edges, interval_edges FROM study").fetchone()
    return {"name": row[0], "description": row[1], "hist_edges": list(row[2]), "interval_edges": list(row[3])}


def activation_stats(con: duckdb.DuckDBPyConnection, arm: str) -> pd.DataFrame:
    """feature, n_fired, frac_nonzero, max_act of every feature the activations stage measured."""
    return con.execute("SELECT feature, n_fired, frac_nonzero, max_act FROM feature_activations WHERE arm = ? "
                       "ORDER BY feature", [arm]).df()


def logit_tokens(con: duckdb.DuckDBPyConnection, arm: str) -> pd.DataFrame:
    """feature, kind ('top' | 'bottom'), rank, token, value: the decoder projection of every feature."""
    return con.execute("SELECT feature, kind, rank, token, value FROM top_tokens WHERE arm = ? "
                       "ORDER BY feature, kind DESC, rank", [arm]).df()


def activation_histograms(con: duckdb.DuckDBPyConnection, arm: str) -> pd.DataFrame:
    """feature, counts (one per bin of study.hist_edges)."""
    return con.execute("SELECT feature, counts FROM histograms WHERE arm = ? ORDER BY feature", [arm]).df()


def contexts(con: duckdb.DuckDBPyConnection, arm: str) -> pd.DataFrame:
    """Every stored context of the arm: top ones by rank, then interval samples from the strongest interval."""
    return con.execute("""
        SELECT feature, kind, rank, interval, interval_low, interval_high, max_act, row_index, max_index, tokens, acts
        FROM contexts WHERE arm = ? ORDER BY feature, kind DESC, interval DESC NULLS FIRST, rank""", [arm]).df()


def decoder_neighbours(con: duckdb.DuckDBPyConnection, arm: str) -> pd.DataFrame:
    """feature, rank, neighbour, cosine: nearest features of the same SAE by decoder cosine."""
    return con.execute("SELECT feature, rank, neighbour, cosine FROM feature_neighbours WHERE arm = ? "
                       "ORDER BY feature, rank", [arm]).df()


def fate_features(con: duckdb.DuckDBPyConnection, pair: tuple[str, str], arm: str, status: str,
                  limit: int) -> pd.DataFrame:
    """`arm`'s features of one fate in `pair`, the farthest from any partner first (lowest best correlation), then
    the most fired: feature, match_feature, match_corr, n_fired, top_text, is_candidate."""
    return con.execute("""
        SELECT m.feature, m.match_feature, m.match_corr, m.n_fired, w.top_text, w.is_candidate
        FROM feature_matches m LEFT JOIN feature_words w ON w.arm = m.arm AND w.feature = m.feature
        WHERE m.arm_a = ? AND m.arm_b = ? AND m.arm = ? AND m.status = ?
        ORDER BY m.match_corr NULLS FIRST, m.n_fired DESC, m.feature LIMIT ?""", [*pair, arm, status, limit]).df()


def fate_counts(con: duckdb.DuckDBPyConnection, pair: tuple[str, str]) -> pd.DataFrame:
    """arm, status, features: how many features of each arm have each fate in the pair."""
    return con.execute("SELECT arm, status, count(*) AS features FROM feature_matches WHERE arm_a = ? AND arm_b = ? "
                       "GROUP BY arm, status ORDER BY arm, status", list(pair)).df()


def top_contexts(con: duckdb.DuckDBPyConnection, arm: str, features: list[int], per_feature: int) -> pd.DataFrame:
    """feature, rank, max_act, max_index, tokens, acts: each feature's strongest `per_feature` top contexts."""
    return con.execute("""
        SELECT feature, rank, max_act, max_index, tokens, acts FROM contexts
        WHERE arm = ? AND kind = 'top' AND list_contains(?, feature) AND rank < ? ORDER BY feature, rank""",
                       [arm, [int(f) for f in features], per_feature]).df()


def words(con: duckdb.DuckDBPyConnection, arm: str, features: list[int]) -> dict[int, tuple[str, bool]]:
    """feature -> (top_text, is_candidate) for the features given."""
    rows = con.execute("SELECT feature, top_text, is_candidate FROM feature_words WHERE arm = ? AND "
                       "list_contains(?, feature)", [arm, [int(f) for f in features]]).fetchall()
    return {int(f): (text or "", bool(candidate)) for f, text, candidate in rows}


def corpus_rows(con: duckdb.DuckDBPyConnection) -> int:
    """Rows of the token set the activations stage read (the prompts behind the contexts); 0 if unknown."""
    row = con.execute("""SELECT sum(t.n_rows) FROM token_sets t JOIN (SELECT DISTINCT token_set FROM stages
                         WHERE stage = 'activations') s USING (token_set)""").fetchone()
    return int(row[0] or 0)
