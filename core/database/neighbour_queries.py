"""The dashboard's reads of the nearest-feature tables and the feature map (re-exported by core.database.queries,
so `dashboard.data.query(name, ...)` finds them)."""

from __future__ import annotations

import duckdb
import pandas as pd

# match_pairs seen from either side: (arm, feature) correlates with (partner_arm, partner) at `corr`.
_PARTNERS = """(SELECT arm_a AS arm, feature_a AS feature, arm_b AS partner_arm, feature_b AS partner, corr
                FROM match_pairs
                UNION ALL SELECT arm_b, feature_b, arm_a, feature_a, corr FROM match_pairs)"""


def own_neighbours(con: duckdb.DuckDBPyConnection, arm: str, feature: int) -> pd.DataFrame:
    """rank, neighbour, cosine, top_tokens: the feature's nearest features in its own SAE by decoder cosine."""
    return con.execute("""
        SELECT n.rank, n.neighbour, n.cosine, w.top_text AS top_tokens
        FROM feature_neighbours n
        LEFT JOIN feature_words w ON w.arm = n.arm AND w.feature = n.neighbour
        WHERE n.arm = ? AND n.feature = ? ORDER BY n.rank""", [arm, int(feature)]).df()


def cross_neighbours(con: duckdb.DuckDBPyConnection, arm: str, feature: int) -> pd.DataFrame:
    """rank, neighbour_arm, neighbour, cosine, corr, top_tokens: the nearest features of the other arm by decoder
    cosine, each with its activation correlation when the matching stage kept the pair (at or above its
    threshold; NULL below it)."""
    return con.execute(f"""
        SELECT n.rank, n.neighbour_arm, n.neighbour, n.cosine, p.corr, w.top_text AS top_tokens
        FROM cross_neighbours n
        LEFT JOIN {_PARTNERS} p ON p.arm = n.arm AND p.feature = n.feature AND p.partner_arm = n.neighbour_arm
                                   AND p.partner = n.neighbour
        LEFT JOIN feature_words w ON w.arm = n.neighbour_arm AND w.feature = n.neighbour
        WHERE n.arm = ? AND n.feature = ? ORDER BY n.rank""", [arm, int(feature)]).df()


def correlated_features(con: duckdb.DuckDBPyConnection, arm: str, feature: int, limit: int = 10) -> pd.DataFrame:
    """partner_arm, partner, corr, cosine, top_tokens: the other arm's features whose activations correlate most
    with this one's (from the matching stage's pairs), with their decoder cosine when among the 10 nearest."""
    return con.execute(f"""
        SELECT p.partner_arm, p.partner, p.corr, n.cosine, w.top_text AS top_tokens
        FROM {_PARTNERS} p
        LEFT JOIN cross_neighbours n ON n.arm = p.arm AND n.feature = p.feature AND n.neighbour_arm = p.partner_arm
                                        AND n.neighbour = p.partner
        LEFT JOIN feature_words w ON w.arm = p.partner_arm AND w.feature = p.partner
        WHERE p.arm = ? AND p.feature = ? ORDER BY p.corr DESC, p.partner LIMIT ?""",
                       [arm, int(feature), int(limit)]).df()


def feature_map(con: duckdb.DuckDBPyConnection, pair: tuple[str, str]) -> pd.DataFrame:
    """arm, feature, x, y, fate, is_candidate, coherence, top_tokens: every point of one pair's feature map, with
    what the map page colours and hovers by (fate in this pair: persist / emerge / disappear / rare / dead, NULL
    without a diff)."""
    return con.execute("""
        SELECT m.arm, m.feature, m.x, m.y, fm.status AS fate, coalesce(w.is_candidate, FALSE) AS is_candidate,
               w.coherence, w.top_text AS top_tokens
        FROM feature_map m
        LEFT JOIN feature_matches fm ON fm.arm_a = m.arm_a AND fm.arm_b = m.arm_b AND fm.arm = m.arm
                                        AND fm.feature = m.feature
        LEFT JOIN feature_words w ON w.arm = m.arm AND w.feature = m.feature
        WHERE m.arm_a = ? AND m.arm_b = ?
        ORDER BY m.arm, m.feature""", list(pair)).df()


def decoder_stage_notes(con: duckdb.DuckDBPyConnection, pair: tuple[str, str] | None = None) -> dict[str, str]:
    """stage -> why it was skipped, for the cross_neighbours and map stages that were (e.g. different d_in); of
    one pair when given."""
    rows = con.execute("SELECT stage, note FROM stages WHERE stage IN ('cross_neighbours', 'map') "
                       "AND note IS NOT NULL AND (? IS NULL OR (arm_a = ? AND arm_b = ?))",
                       [pair and pair[0], pair and pair[0], pair and pair[1]]).fetchall()
    return dict(rows)
