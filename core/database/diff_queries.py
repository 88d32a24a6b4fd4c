"""The dashboard's reads of the pair stages (the model diff): every one names its pair (arm_a, arm_b), one of the
study's declared pairs (table `pairs`), so a study with any number of arms and pairs shows each pair on its own.
Pages reach them through dashboard.reads.pairs and dashboard.reads.diff."""

from __future__ import annotations

from typing import Any

import duckdb
import pandas as pd

Pair = tuple[str, str]  # (arm_a, arm_b) as the config declares it
DIFF_SORTABLE = ("arm", "feature", "coherence", "med_matches", "frac_nonzero", "max_act", "mean_act", "llr",
                 "n_valid", "n_partners", "same_index_corr")
_STATUS_ORDER = "list_position(['persist', 'emerge', 'disappear', 'rare', 'dead'], status)"  # a constant


def pairs(con: duckdb.DuckDBPyConnection) -> list[Pair]:
    """The study's declared pairs, in the config's order (the first one an arm is in gives its fate in the
    features view)."""
    return [(a, b) for a, b in con.execute("SELECT arm_a, arm_b FROM pairs ORDER BY position").fetchall()]


def pair_controls(con: duckdb.DuckDBPyConnection) -> dict[Pair, dict[str, str | None]]:
    """Each pair's roles: {"control": the control arm declared for it, "controls": for a control pair (a, control),
    the arm b whose pair it is the control of}; both None for a pair without either."""
    rows = con.execute("SELECT arm_a, arm_b, control, controls FROM pairs ORDER BY position").fetchall()
    return {(a, b): {"control": control, "controls": controls} for a, b, control, controls in rows}


def fate_statistics(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """arm, feature, status, match_corr, same_index_corr of every feature of one pair: what core.diff_control sets
    against the control pair's."""
    return con.execute("SELECT arm, feature, status, match_corr, same_index_corr FROM feature_matches "
                       "WHERE arm_a = ? AND arm_b = ? ORDER BY arm <> ?, feature", [*pair, pair[0]]).df()


def _metric_values(con: duckdb.DuckDBPyConnection, pair: Pair) -> dict[str, float]:
    """The pair stages' metrics of one pair as "stage.metric" (the command line's summary; pages read them typed:
    core.database.metrics.pair_metrics)."""
    rows = con.execute("SELECT stage || '.' || metric, value FROM metrics WHERE arm_a = ? AND arm_b = ?",
                       list(pair)).fetchall()
    return dict(rows)


def pair_token_sets(con: duckdb.DuckDBPyConnection, pair: Pair) -> dict[str, str]:
    """stage -> the token set the pair's stage measured on."""
    return dict(con.execute("SELECT stage, token_set FROM stages WHERE arm_a = ? AND arm_b = ? "
                            "AND token_set IS NOT NULL", list(pair)).fetchall())


def diff_notes(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """The pair's stages that were skipped, and why (e.g. the arms' tokenizers differ)."""
    return con.execute("SELECT stage, note FROM stages WHERE arm_a = ? AND arm_b = ? AND note IS NOT NULL "
                       "ORDER BY stage", list(pair)).df()


def diff_counts(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """arm, status, features, share, arm_a's rows first. Shares of persist / emerge / disappear are of the arm's
    features that have a fate (neither dead nor rare on the diff's tokens); dead and rare have no share (NULL)."""
    return con.execute(f"""
        SELECT arm, status, count(*) AS features,
               CASE WHEN status IN ('dead', 'rare') THEN NULL
                    ELSE count(*) / sum(count(*)) FILTER (WHERE status NOT IN ('dead', 'rare'))
                                   OVER (PARTITION BY arm) END AS share
        FROM feature_matches WHERE arm_a = ? AND arm_b = ?
        GROUP BY arm, status ORDER BY arm <> ?, {_STATUS_ORDER}""", [*pair, pair[0]]).df()


def match_correlations(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """arm, feature, match_corr (the best match's correlation) of every feature of the pair with a fate."""
    return con.execute("SELECT arm, feature, match_corr FROM feature_matches WHERE arm_a = ? AND arm_b = ? "
                       "AND match_corr IS NOT NULL AND status NOT IN ('dead', 'rare')", list(pair)).df()


# Per feature of either arm of one pair: its partners at or above the threshold as text, strongest first.
_PARTNER_LISTS = """
    SELECT arm, feature, string_agg(partner || ' (' || printf('%.3f', corr) || ')', ', '
                                    ORDER BY corr DESC, partner) AS partners
    FROM (SELECT arm_a AS arm, feature_a AS feature, feature_b AS partner, corr FROM match_pairs
          WHERE arm_a = ? AND arm_b = ?
          UNION ALL SELECT arm_b, feature_b, feature_a, corr FROM match_pairs WHERE arm_a = ? AND arm_b = ?)
    GROUP BY arm, feature"""


def diff_features(con: duckdb.DuckDBPyConnection, pair: Pair, status: str, sort: str = "frac_nonzero",
                  descending: bool = True, limit: int = 200) -> pd.DataFrame:
    """Features of one status in one pair with their density, coherence, matches, top tokens, best (sub-threshold)
    match, how many partners they have at or above the threshold (the strongest listed) and their one-to-one
    partner."""
    if sort not in DIFF_SORTABLE:
        raise ValueError(f"sort must be one of {DIFF_SORTABLE}")
    order = f"{sort} {'DESC' if descending else 'ASC'} NULLS LAST, arm <> ?, feature"  # sort: whitelisted
    return con.execute(f"""
        SELECT m.arm, m.feature, w.top_text AS top_tokens, a.frac_nonzero, m.n_fired AS diff_n_fired, w.coherence,
               w.med_matches, w.is_candidate, m.match_arm, m.match_feature, m.match_corr, m.n_partners, p.partners,
               m.assigned_feature, m.assigned_corr, m.same_index_corr, m.same_index_cos, a.max_act, a.mean_act,
               a.llr, w.n_valid
        FROM feature_matches m LEFT JOIN feature_words w USING (arm, feature)
        LEFT JOIN feature_activations a USING (arm, feature) LEFT JOIN ({_PARTNER_LISTS}) p USING (arm, feature)
        WHERE m.arm_a = ? AND m.arm_b = ? AND m.status = ? ORDER BY {order} LIMIT ?""",
                       [*pair, *pair, *pair, status, pair[0], limit]).df()


def same_index_correlations(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """arm, feature, status, same_index_corr, same_index_cos of every feature of the pair whose correlation with
    the other arm's feature of the same index is defined (both fired, neither rare)."""
    return con.execute("SELECT arm, feature, status, same_index_corr, same_index_cos FROM feature_matches "
                       "WHERE arm_a = ? AND arm_b = ? AND same_index_corr IS NOT NULL ORDER BY arm <> ?, feature",
                       [*pair, pair[0]]).df()


def same_index_changes(con: duckdb.DuckDBPyConnection, pair: Pair, limit: int = 20) -> pd.DataFrame:
    """arm_b's features that fired in both arms, least correlated with arm_a's feature of the same index first:
    feature, status, same_index_corr, same_index_cos, fired_a / fired_b (the 5 tokens the feature fires on most in
    each arm, by firings; what changed is what it reads, which the decoder's top tokens need not show)."""
    return con.execute("""
        WITH fired AS (SELECT arm, feature, string_agg(token, ' | ' ORDER BY rank) AS tokens FROM fired_tokens
                       WHERE rank < 5 GROUP BY arm, feature)
        SELECT m.feature, m.status, m.same_index_corr, m.same_index_cos, fa.tokens AS fired_a, fb.tokens AS fired_b
        FROM feature_matches m
        LEFT JOIN fired fb ON fb.arm = m.arm AND fb.feature = m.feature
        LEFT JOIN fired fa ON fa.arm = m.match_arm AND fa.feature = m.feature
        WHERE m.arm_a = ? AND m.arm_b = ? AND m.arm = ? AND m.same_index_corr IS NOT NULL
        ORDER BY m.same_index_corr, m.feature LIMIT ?""", [*pair, pair[1], limit]).df()


def feature_fates(con: duckdb.DuckDBPyConnection, arm: str, feature: int) -> pd.DataFrame:
    """The feature's fate in each declared pair it is in (config order): arm_a, arm_b, match_arm, match_feature,
    match_corr, status, n_fired (on that pair's tokens), n_partners, assigned_feature, assigned_corr, same_index_corr,
    same_index_cos (against the other arm's feature of the same index)."""
    return con.execute("""
        SELECT m.arm_a, m.arm_b, m.match_arm, m.match_feature, m.match_corr, m.status, m.n_fired, m.n_partners,
               m.assigned_feature, m.assigned_corr, m.same_index_corr, m.same_index_cos
        FROM feature_matches m JOIN pairs p USING (arm_a, arm_b)
        WHERE m.arm = ? AND m.feature = ? ORDER BY p.position""", [arm, int(feature)]).df()


def feature_partners(con: duckdb.DuckDBPyConnection, arm: str, feature: int, other: str | None = None) -> pd.DataFrame:
    """partner_arm, partner, corr, assigned: every feature of the other arm (of `other`, when given: one pair)
    that correlates with this one at or above the threshold, strongest first."""
    return con.execute("""
        SELECT partner_arm, partner, corr, assigned FROM (
            SELECT arm_a AS arm, feature_a AS feature, arm_b AS partner_arm, feature_b AS partner, corr, assigned
            FROM match_pairs
            UNION ALL SELECT arm_b, feature_b, arm_a, feature_a, corr, assigned FROM match_pairs)
        WHERE arm = ? AND feature = ? AND (? IS NULL OR partner_arm = ?)
        ORDER BY corr DESC, partner_arm, partner""", [arm, int(feature), other, other]).df()


def many_to_one(con: duckdb.DuckDBPyConnection, pair: Pair, limit: int = 50) -> pd.DataFrame:
    """Features of one pair with more than one partner at or above the threshold, most partners first."""
    return con.execute("""
        SELECT m.arm, m.feature, m.n_partners, w.top_text AS top_tokens, m.assigned_feature, m.assigned_corr
        FROM feature_matches m LEFT JOIN feature_words w USING (arm, feature)
        WHERE m.arm_a = ? AND m.arm_b = ? AND m.n_partners > 1
        ORDER BY m.n_partners DESC, m.arm <> ?, m.feature LIMIT ?""", [*pair, pair[0], limit]).df()


def matching_export(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """One pair's whole matching, one row per feature of both arms: status, firings on the diff's tokens, best
    match, every partner at or above the threshold (lists, strongest first) and the one-to-one partner."""
    return con.execute("""
        WITH both_sides AS (
            SELECT arm_a AS arm, feature_a AS feature, feature_b AS partner, corr FROM match_pairs
            WHERE arm_a = ? AND arm_b = ?
            UNION ALL SELECT arm_b, feature_b, feature_a, corr FROM match_pairs WHERE arm_a = ? AND arm_b = ?),
        lists AS (SELECT arm, feature, list(partner ORDER BY corr DESC, partner) AS partners,
                         list(corr ORDER BY corr DESC, partner) AS partner_corrs FROM both_sides GROUP BY arm, feature)
        SELECT m.arm, m.feature, m.status, m.n_fired AS n_fired_diff_tokens, m.match_arm AS other_arm,
               m.match_feature AS best_match, m.match_corr AS best_corr, m.n_partners,
               coalesce(l.partners, []) AS partners, coalesce(l.partner_corrs, []) AS partner_corrs,
               m.assigned_feature AS one_to_one_match, m.assigned_corr AS one_to_one_corr,
               m.decoder_cos, m.logit_sim, m.same_index_corr, m.same_index_cos
        FROM feature_matches m LEFT JOIN lists l USING (arm, feature)
        WHERE m.arm_a = ? AND m.arm_b = ? ORDER BY m.arm <> ?, m.feature""", [*pair, *pair, *pair, pair[0]]).df()


def similarity_hist(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    return con.execute("SELECT kind, low, high, count FROM similarity_hist WHERE arm_a = ? AND arm_b = ? "
                       "ORDER BY kind, low", list(pair)).df()


def similarity_by_position(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    return con.execute("SELECT position, mean_cosine, mean_distance FROM similarity_by_position "
                       "WHERE arm_a = ? AND arm_b = ? ORDER BY position", list(pair)).df()


def transfer_table(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """One row per (SAE, model) of the pair, arm_a's SAE first, each SAE on its own model first: L0, explained
    variance, CE clean / spliced / delta / recovered, dead, outliers (one column per metric, by name)."""
    long = con.execute("SELECT sae_arm, model_arm, metric, value FROM transfer_metrics WHERE arm_a = ? AND arm_b = ?",
                       list(pair)).df()
    if long.empty:
        return pd.DataFrame(columns=["sae_arm", "model_arm"])
    # pandas, not PIVOT: DuckDB's PIVOT takes no parameters in its source
    wide = long.pivot_table(index=["sae_arm", "model_arm"], columns="metric", values="value", aggfunc="first")
    wide = wide.reset_index().rename_axis(columns=None)
    order = sorted(range(len(wide)), key=lambda i: (wide["sae_arm"][i] != pair[0],
                                                    wide["model_arm"][i] != wide["sae_arm"][i]))
    return wide.iloc[order].reset_index(drop=True)


def transfer_densities(con: duckdb.DuckDBPyConnection, pair: Pair, sae_arm: str) -> pd.DataFrame:
    """feature, density on the SAE's own model, density on the pair's other model (the scatter of seed 002)."""
    return con.execute("""
        SELECT own.feature, own.frac_nonzero AS own_density, other.frac_nonzero AS other_density
        FROM transfer_densities own JOIN transfer_densities other
          ON own.feature = other.feature AND other.sae_arm = own.sae_arm AND other.model_arm <> own.model_arm
             AND other.arm_a = own.arm_a AND other.arm_b = own.arm_b
        WHERE own.arm_a = ? AND own.arm_b = ? AND own.sae_arm = ? AND own.model_arm = own.sae_arm
        ORDER BY own.feature""", [*pair, sae_arm]).df()


def pair_summary(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per declared pair (config order): its names, fate counts (`diff_counts`) and metrics: the run's summary."""
    return [{"pair": pair, "counts": diff_counts(con, pair), "metrics": _metric_values(con, pair)}
            for pair in pairs(con)]
