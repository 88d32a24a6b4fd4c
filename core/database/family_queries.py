"""Reads of a model family (core.family): the declared pairs, the arms, and each direction of the four pairs'
matching as a core.family.MatchSide."""

from __future__ import annotations

import duckdb

from core.family import Family, MatchSide, Sides, match_side


def declared_pairs(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """The study's declared pairs, (earlier, later), in config order; control pairs (rows that name what they
    control) are left out."""
    rows = con.execute("SELECT arm_a, arm_b FROM pairs WHERE controls IS NULL ORDER BY position").fetchall()
    return [(str(a), str(b)) for a, b in rows]


def study_arms(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [str(arm) for (arm,) in con.execute("SELECT arm FROM arms ORDER BY position").fetchall()]


def arm_d_sae(con: duckdb.DuckDBPyConnection, arm: str) -> int | None:
    row = con.execute("SELECT d_sae FROM arms WHERE arm = ?", [arm]).fetchone()
    return int(row[0]) if row else None


def match_sides(con: duckdb.DuckDBPyConnection, family: Family) -> Sides:
    """Both directions of each of the family's four pairs: (arm, match_arm) -> MatchSide."""
    sides: dict[tuple[str, str], MatchSide] = {}
    for earlier, later in family.pairs:
        for arm, other in ((earlier, later), (later, earlier)):
            rows = con.execute("""
                SELECT feature, match_feature, match_corr, status, assigned_feature, assigned_corr
                FROM feature_matches
                WHERE arm_a = ? AND arm_b = ? AND arm = ? AND match_arm = ? ORDER BY feature""",
                               [earlier, later, arm, other]).fetchall()
            if rows:
                sides[(arm, other)] = match_side(*zip(*rows), d_sae=arm_d_sae(con, arm))
    return sides


def proxy_inputs(con: duckdb.DuckDBPyConnection, arm: str, feature: int,
                 tokens: tuple[str, ...]) -> dict[str, object]:
    """What core.proxy_test.llr_from_fired_tokens needs for `arm`'s `feature` and a hypothesis given as token texts
    (as the unigram table writes them, e.g. " ="): the feature's stored top fired tokens (id, summed activation),
    its total activation, the hypothesis tokens' ids and corpus counts, and the corpus's token count."""
    fired = con.execute("SELECT token_id, sum_act FROM fired_tokens WHERE arm = ? AND feature = ? ORDER BY rank",
                        [arm, int(feature)]).fetchall()
    total = con.execute("SELECT sum_act FROM feature_activations WHERE arm = ? AND feature = ?",
                        [arm, int(feature)]).fetchone()
    unigram = con.execute("SELECT token_id, count FROM unigram WHERE arm = ? AND list_contains(?, token)",
                          [arm, list(tokens)]).fetchall()
    n_tokens = con.execute("SELECT sum(count) FROM unigram WHERE arm = ?", [arm]).fetchone()
    return {"fired": [(int(t), float(a)) for t, a in fired], "act_total": float(total[0] or 0) if total else 0.0,
            "unigram": {int(t): int(c) for t, c in unigram}, "n_tokens": int(n_tokens[0] or 0)}
