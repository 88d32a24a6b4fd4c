"""The dashboard's reads of the features database (features, labels' queue, the paper's figures, steering; the
pairs' reads live in diff_queries, changed_queries, neighbour_queries and pair_queries; the pages reach each through
one typed read in dashboard.reads). Filters run in DuckDB with `?` parameters; sort columns
come from a fixed list. Current labels (from core.labels, another file) are passed in as a DataFrame
(arm, feature, label) and joined here, so the label filter runs in the same query."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from core.coherence import CANDIDATE_MIN_MATCHES
from core.database.feature_fields import FILTERED, SHOWN, SORTABLE, SORTS, filter_sql

LABEL_STATUSES = ("any", "unlabelled", "labelled", "medical", "not_medical", "unsure")
FATES = ("persist", "emerge", "disappear", "dead", "rare")  # feature_matches.status (core.matching.feature_status)
_EMPTY_LABELS = pd.DataFrame({"arm": pd.Series(dtype=str), "feature": pd.Series(dtype="int32"),
                              "label": pd.Series(dtype=str)})


@dataclass(frozen=True)
class FeatureFilter:
    """What the Features page filters on; None means no bound."""

    arms: tuple[str, ...] = ()
    coherence_min: float | None = None
    coherence_max: float | None = None
    min_matches: int = 0
    density_min: float | None = None
    density_max: float | None = None
    label_status: str = "any"
    word: str = ""  # a word among the top tokens or the tokens it fires on most (case, spaces ignored), e.g. "heart"
    live_only: bool = False  # leave out dead features (never fired on the corpus: nothing to read in them)
    explanation: str = ""  # words searched in the features' explanations (scored by core.explain.search)
    candidates_only: bool = False  # only the medical candidates (by the study's rule: feature_words.candidate_by)
    fates: tuple[str, ...] = ()  # only these fates in the arm's first declared pair (features.diff_status); (): any
    ranges: tuple[tuple[str, float | None, float | None], ...] = ()  # (field, low, high) of other declared filters

    def __post_init__(self) -> None:
        unknown = [name for name, _, _ in self.ranges if name not in {f.name for f in FILTERED}]
        if unknown:
            raise ValueError(f"no declared filter {unknown} (core.database.feature_fields)")
        if self.label_status not in LABEL_STATUSES:
            raise ValueError(f"label_status must be one of {LABEL_STATUSES}")
        if not set(self.fates) <= set(FATES):
            raise ValueError(f"fates must be among {FATES}")


    def bounds(self) -> dict[str, tuple[float | None, float | None]]:
        """Declared field -> (low, high) of every declared filter (None: no bound)."""
        named = {"coherence": (self.coherence_min, self.coherence_max), "med_matches": (self.min_matches or None, None),
                 "frac_nonzero": (self.density_min, self.density_max)}
        return named | {name: (low, high) for name, low, high in self.ranges}


# The declared fields' filters (core.database.feature_fields), then those over other tables (labels, explanations,
# fired tokens) and lists; every value a named parameter.
_WHERE = f"""
    list_contains($arms, f.arm)
    AND {filter_sql("f")}
    AND CASE $label_status WHEN 'any' THEN TRUE WHEN 'unlabelled' THEN l.label IS NULL
                           WHEN 'labelled' THEN l.label IS NOT NULL ELSE l.label = $label_status END
    AND ($word = '' OR list_contains(f.top_words, lower(trim($word)))
         OR EXISTS (SELECT 1 FROM fired_tokens t WHERE t.arm = f.arm AND t.feature = f.feature
                    AND lower(trim(t.token)) = lower(trim($word))))
    AND (NOT $live_only OR coalesce(f.n_fired, 0) > 0)
    AND ($explanation = '' OR coalesce(e.match, 0) > 0)
    AND (NOT $candidates_only OR coalesce(f.is_candidate, FALSE))
    AND (len($fates) = 0 OR list_contains($fates, f.diff_status))"""


def _where_params(flt: FeatureFilter) -> dict[str, Any]:
    params: dict[str, Any] = {
        "arms": list(flt.arms), "label_status": flt.label_status, "word": flt.word, "live_only": flt.live_only,
        "explanation": flt.explanation, "candidates_only": flt.candidates_only, "fates": list(flt.fates)}
    bounds = flt.bounds()
    for field in FILTERED:
        low, high = bounds.get(field.name, (None, None))
        params[f"{field.name}_min"] = low
        if field.filter == "range":
            params[f"{field.name}_max"] = high
    return params


# The Features table: every declared field it shows or sorts by, then the label and the explanation.
_PAGE_FIELDS = tuple(f for f in SHOWN + SORTS if f.name not in ("arm", "feature"))
_PAGE_FIELDS = tuple(dict.fromkeys(_PAGE_FIELDS))
FEATURES_PAGE_COLUMNS = ("arm", "feature", *(f.table_column for f in _PAGE_FIELDS), "label", "explanation",
                         "simulation", "detection")
_PAGE_SELECT = ", ".join(["f.arm", "f.feature"] + [f"f.{f.name}" + (f" AS {f.table_column}" if f.shown_as else "")
                                                   for f in _PAGE_FIELDS])


def features_page(con: duckdb.DuckDBPyConnection, flt: FeatureFilter, labels: pd.DataFrame | None = None,
                  sort: str = "coherence", descending: bool = True, limit: int = 50,
                  offset: int = 0, explanations: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int]:
    """One page of the filtered, sorted feature table (with each feature's top tokens and explanation) and the
    total count. explanations: arm, feature, explanation, simulation, detection, match (core.explanations)."""
    if sort not in SORTABLE:
        raise ValueError(f"sort must be one of {SORTABLE}")
    with _with_labels(con, labels, explanations):
        source = _SOURCE
        # sort: whitelisted; ties (many, on whole-number columns) go to the more coherent feature
        order = f"f.{sort} {'DESC' if descending else 'ASC'} NULLS LAST, f.coherence DESC NULLS LAST, f.arm, f.feature"
        # One pass: the window count sees every filtered row before LIMIT keeps one page.
        page = con.execute(f"""
            SELECT {_PAGE_SELECT}, l.label, e.explanation, e.simulation, e.detection, count(*) OVER () AS total
            FROM {source} WHERE {_WHERE} ORDER BY {order} LIMIT $limit OFFSET $offset""",
                           _where_params(flt) | {"limit": limit, "offset": offset}).df()
        if len(page):
            total = page.pop("total").iloc[0]
        else:  # past the last page (or nothing matches): count on its own
            page = page.drop(columns="total")
            total = con.execute(f"SELECT count(*) FROM {source} WHERE {_WHERE}", _where_params(flt)).fetchall()[0][0]
    return page, int(total)


def features_count(con: duckdb.DuckDBPyConnection, flt: FeatureFilter, labels: pd.DataFrame | None = None,
                   explanations: pd.DataFrame | None = None) -> int:
    """How many features pass the filter (the Features page asks it of each filter left out, to say which one
    emptied the table)."""
    with _with_labels(con, labels, explanations):
        return int(con.execute(f"SELECT count(*) FROM {_SOURCE} WHERE {_WHERE}", _where_params(flt)).fetchall()[0][0])


_SOURCE = ("features f LEFT JOIN current_labels l USING (arm, feature) "
           "LEFT JOIN current_explanations e USING (arm, feature)")
_EMPTY_EXPLANATIONS = pd.DataFrame({"arm": pd.Series(dtype=str), "feature": pd.Series(dtype="int32"),
                                    "explanation": pd.Series(dtype=str), "simulation": pd.Series(dtype=float),
                                    "detection": pd.Series(dtype=float), "match": pd.Series(dtype=float)})


@contextmanager
def _with_labels(con: duckdb.DuckDBPyConnection, labels: pd.DataFrame | None,
                 explanations: pd.DataFrame | None = None) -> Iterator[None]:
    """Current labels and explanations visible to the query as the tables `current_labels` (arm, feature, label)
    and `current_explanations` (arm, feature, explanation, simulation, detection, match)."""
    con.register("current_labels", _labels_frame(labels))
    con.register("current_explanations", _EMPTY_EXPLANATIONS if explanations is None or explanations.empty else
                 explanations[list(_EMPTY_EXPLANATIONS.columns)].astype({"feature": "int32"}))
    try:
        yield
    finally:
        con.unregister("current_labels")
        con.unregister("current_explanations")


def _labels_frame(labels: pd.DataFrame | None) -> pd.DataFrame:
    if labels is None or labels.empty:
        return _EMPTY_LABELS
    return labels[["arm", "feature", "label"]].astype({"feature": "int32"})


def arm_overview(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per arm: features, candidates, coherence mean / median, dead features and their share (never fired on
    the activation stage's tokens, `dead_token_set`), and L0, explained variance, CE loss recovered and tokens of
    the quality stage (measured on `token_set`)."""
    quality = con.execute("""
        SELECT m.arm, max(value) FILTER (WHERE metric = 'l0') AS l0,
               max(value) FILTER (WHERE metric = 'explained_variance') AS explained_variance,
               max(value) FILTER (WHERE metric = 'ce_loss_recovered') AS ce_loss_recovered,
               max(value) FILTER (WHERE metric = 'n_tokens') AS n_tokens, any_value(s.token_set) AS token_set
        FROM metrics m LEFT JOIN stages s ON s.arm = m.arm AND s.stage = m.stage
        WHERE m.stage = 'quality' GROUP BY m.arm""").df()
    dead_on = con.execute("SELECT arm, token_set AS dead_token_set FROM stages WHERE stage = 'activations'").df()
    arms_table = con.execute("SELECT arm, hook_name, d_sae, position FROM arms").df()
    merged = (arm_summary(con).merge(arms_table, on="arm", how="left").merge(quality, on="arm", how="left")
              .merge(dead_on, on="arm", how="left"))
    merged.insert(merged.columns.get_loc("dead") + 1, "dead_fraction", merged["dead"] / merged["features"])
    columns = ["arm", "hook_name", "d_sae"] + [c for c in merged.columns if c not in ("arm", "hook_name", "d_sae",
                                                                                     "position")]
    return merged.sort_values(["position", "arm"])[columns].reset_index(drop=True)


def arms(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return con.execute("SELECT * FROM arms ORDER BY position").df()


def feature_row(con: duckdb.DuckDBPyConnection, arm: str, feature: int) -> dict[str, Any] | None:
    """The feature's numbers (features view), or None when the arm has no such feature."""
    frame = con.execute("SELECT * FROM features WHERE arm = ? AND feature = ?", [arm, int(feature)]).df()
    return None if frame.empty else frame.iloc[0].to_dict()


def feature_tokens(con: duckdb.DuckDBPyConnection, arm: str, feature: int) -> pd.DataFrame:
    """kind ('top' | 'bottom'), rank, token_id, token, value of one feature's decoder projection."""
    return con.execute("SELECT kind, rank, token_id, token, value FROM top_tokens WHERE arm = ? AND feature = ? "
                       "ORDER BY kind DESC, rank", [arm, int(feature)]).df()


def feature_histogram(con: duckdb.DuckDBPyConnection, arm: str, feature: int) -> pd.DataFrame:
    """Bins of the feature's activation histogram: low, high, count (log-spaced edges from the study row)."""
    return con.execute("""
        SELECT s.hist_edges[i] AS low, s.hist_edges[i + 1] AS high, h.counts[i] AS count
        FROM histograms h, study s, range(1, len(h.counts) + 1) AS r(i)
        WHERE h.arm = ? AND h.feature = ? ORDER BY i""", [arm, int(feature)]).df()


def feature_contexts(con: duckdb.DuckDBPyConnection, arm: str, feature: int, kind: str = "top") -> pd.DataFrame:
    """Contexts of one feature: 'top' by activation, or 'interval' samples (strongest interval first); n_intervals
    of the study (the first interval also holds the values below it, the last those above)."""
    return con.execute("""
        SELECT rank, interval, interval_low, interval_high, max_act, row_index, max_pos, max_index, tokens, acts,
               (SELECT len(interval_edges) - 1 FROM study) AS n_intervals
        FROM contexts WHERE arm = ? AND feature = ? AND kind = ?
        ORDER BY interval DESC NULLS FIRST, rank""", [arm, int(feature), kind]).df()


def feature_fired_tokens(con: duckdb.DuckDBPyConnection, arm: str, feature: int) -> pd.DataFrame:
    """"Fires most on": the token ids the feature fires on most, by number of firings. Per token: count (its
    firings on that id), share of all the feature's firings, mean activation on it, and how many of the
    token's occurrences in the corpus it fires on (occurrences from the corpus unigram)."""
    return con.execute("""
        SELECT t.rank, t.token_id, t.token, t.count, t.count / a.n_fired AS share_of_firings,
               t.sum_act / t.count AS mean_act, u.count AS occurrences, t.count / u.count AS fires_on_share
        FROM fired_tokens t JOIN feature_activations a USING (arm, feature)
        LEFT JOIN unigram u ON u.arm = t.arm AND u.token_id = t.token_id
        WHERE t.arm = ? AND t.feature = ? ORDER BY t.rank""", [arm, int(feature)]).df()


def steering_targets(con: duckdb.DuckDBPyConnection, arm: str, rule: str, features: Sequence[int]) -> pd.DataFrame:
    """What each feature's steering is scored against under the study's candidate rule (core.steer_scores.
    scoring_target): feature, target ("decoder" | "fired"), rank, token_id, token, value: the decoder projection of
    its top logit-lens tokens, or the firings of the tokens it fires on most. Features in the given order."""
    from core.steer_scores import scoring_target

    ids = [int(f) for f in features]
    by = dict(con.execute("SELECT feature, candidate_by FROM feature_words WHERE arm = ? AND list_contains(?, feature)",
                          [arm, ids]).fetchall())
    top = con.execute("""SELECT feature, rank, token_id, token, value::DOUBLE AS value FROM top_tokens
                         WHERE arm = ? AND kind = 'top' AND list_contains(?, feature)""", [arm, ids]).df()
    fired = con.execute("""SELECT feature, rank, token_id, token, count::DOUBLE AS value FROM fired_tokens
                           WHERE arm = ? AND list_contains(?, feature)""", [arm, ids]).df()
    lists = {"decoder": top.groupby("feature"), "fired": fired.groupby("feature")}
    parts = []
    for feature in ids:
        target = scoring_target(rule, by.get(feature), feature in lists["fired"].groups)
        if feature in lists[target].groups:
            parts.append(lists[target].get_group(feature).sort_values("rank").assign(target=target))
    columns = ["feature", "target", "rank", "token_id", "token", "value"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def steering_results(con: duckdb.DuckDBPyConnection, arm: str, features: Sequence[int]) -> pd.DataFrame:
    """Table 1's stored rows (steer_features) of these features, for the Steer page: one per feature steer-eval
    scored, in feature order."""
    return con.execute("SELECT * FROM steer_features WHERE arm = ? AND list_contains(?, feature) ORDER BY feature",
                       [arm, [int(f) for f in features]]).df()


def top_token_overlap(con: duckdb.DuckDBPyConnection, left: tuple[str, int], right: tuple[str, int]) -> pd.DataFrame:
    """Top tokens shared by two features (by token text), with each side's rank."""
    return con.execute("""
        SELECT a.token, a.rank AS left_rank, b.rank AS right_rank
        FROM top_tokens a JOIN top_tokens b ON a.token = b.token AND b.arm = ? AND b.feature = ? AND b.kind = 'top'
        WHERE a.arm = ? AND a.feature = ? AND a.kind = 'top' ORDER BY a.rank""",
                       [right[0], int(right[1]), left[0], int(left[1])]).df()


def coherence_values(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """arm, feature, coherence, is_candidate of every scored feature (for histograms and Table 2)."""
    return con.execute("SELECT arm, feature, coherence, is_candidate FROM features WHERE coherence IS NOT NULL").df()


def match_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Figure 1: per arm, how many features have 0, 1, 2, ... medical matches."""
    return con.execute("SELECT arm, med_matches, count(*) AS features FROM features "
                       "GROUP BY arm, med_matches ORDER BY arm, med_matches").df()


def candidate_words(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per arm and medical word: in how many medical candidates it is among the words that made them candidates
    (`candidates`, and as a share of the arm's candidates: the top tokens' words for a candidate by the decoder, the
    fired tokens' words for one by firing), and how many of those would stop being candidates without it
    (`needed_by`: no rule that made it a candidate keeps the minimum of matches), most frequent first."""
    return con.execute("""
        WITH routes AS (
            SELECT arm, med_matches, matched_words, fired_med_matches, fired_matched_words,
                   coalesce(candidate_by, 'decoder') IN ('decoder', 'both') AS by_decoder,
                   coalesce(candidate_by, 'decoder') IN ('fired', 'both') AS by_firing
            FROM feature_words WHERE is_candidate),
             words AS (
            SELECT *, unnest(list_distinct(list_concat(
                       CASE WHEN by_decoder THEN matched_words ELSE []::VARCHAR[] END,
                       CASE WHEN by_firing THEN fired_matched_words ELSE []::VARCHAR[] END))) AS word FROM routes),
             totals AS (SELECT arm, count(*) AS total FROM feature_words WHERE is_candidate GROUP BY arm)
        SELECT arm, word, count(*) AS candidates, count(*) / any_value(total) AS share,
               count(*) FILTER (WHERE NOT (by_decoder AND med_matches - list_contains(matched_words, word)::INT >= ?)
                                  AND NOT (by_firing AND fired_med_matches
                                           - list_contains(fired_matched_words, word)::INT >= ?)) AS needed_by
        FROM words JOIN totals USING (arm) GROUP BY arm, word ORDER BY arm, candidates DESC, word""",
                       [CANDIDATE_MIN_MATCHES, CANDIDATE_MIN_MATCHES]).df()


def candidate_activation_histogram(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Figure 2: per arm, the activation histograms of all medical candidates summed: low, high, count."""
    return con.execute("""
        WITH bins AS (SELECT h.arm, i, h.counts[i] AS count
                      FROM histograms h JOIN feature_words w USING (arm, feature), range(1, len(h.counts) + 1) r(i)
                      WHERE w.is_candidate)
        SELECT b.arm, s.hist_edges[i] AS low, s.hist_edges[i + 1] AS high, sum(count) AS count
        FROM bins b, study s GROUP BY b.arm, i, s.hist_edges ORDER BY b.arm, i""").df()


# The Label queue leaves out features with nothing to judge: dead on the corpus, or dead / too rare on the diff's
# tokens (a constant; no user input).
_LABELLABLE = "(coalesce(f.n_fired, 1) > 0 AND coalesce(f.diff_status NOT IN ('dead', 'rare'), TRUE))"


def next_unlabelled_candidate(con: duckdb.DuckDBPyConnection, arm: str,
                              labels: pd.DataFrame | None) -> dict[str, Any] | None:
    """The Label page's queue: the arm's unlabelled candidate with most medical words by the rule(s) that made it
    one (its top tokens' matches, its fired tokens' matches, the larger when both), then coherence; or None."""
    with _with_labels(con, labels):
        frame = con.execute(f"""
            SELECT f.* FROM features f LEFT JOIN current_labels l USING (arm, feature)
            WHERE f.arm = ? AND f.is_candidate AND l.label IS NULL AND {_LABELLABLE}
            ORDER BY greatest(
                         CASE WHEN coalesce(f.candidate_by, 'decoder') IN ('decoder', 'both') THEN f.med_matches END,
                         CASE WHEN f.candidate_by IN ('fired', 'both') THEN f.fired_med_matches END) DESC NULLS LAST,
                     f.coherence DESC NULLS LAST, f.feature LIMIT 1""", [arm]).df()
    return None if frame.empty else frame.iloc[0].to_dict()


def label_progress(con: duckdb.DuckDBPyConnection, labels: pd.DataFrame | None) -> pd.DataFrame:
    """arm, candidates, labelled: how far each arm's queue of medical candidates is labelled; left_out: the
    candidates the queue skips (dead on the corpus, or dead / too rare on the diff's tokens)."""
    with _with_labels(con, labels):
        return con.execute(f"""
            SELECT f.arm, count(*) FILTER (WHERE {_LABELLABLE}) AS candidates,
                   count(l.label) FILTER (WHERE {_LABELLABLE}) AS labelled,
                   count(*) FILTER (WHERE NOT {_LABELLABLE}) AS left_out
            FROM features f LEFT JOIN current_labels l USING (arm, feature)
            WHERE f.is_candidate GROUP BY f.arm ORDER BY f.arm""").df()


def coherence_table(con: duckdb.DuckDBPyConnection, labels: pd.DataFrame | None) -> pd.DataFrame:
    """Paper Table 2: coherence count / mean / median / min / max per arm over all scored features, over
    medical candidates, and over features humans labelled medical (NULL coherence is never counted)."""
    with _with_labels(con, labels):
        return con.execute("""
            WITH scoped AS (
                SELECT arm, coherence, 'all features' AS scope, 0 AS k FROM features
                UNION ALL SELECT arm, coherence, 'medical candidates', 1 FROM features WHERE is_candidate
                UNION ALL SELECT f.arm, f.coherence, 'labelled medical', 2
                    FROM features f JOIN current_labels l USING (arm, feature) WHERE l.label = 'medical')
            SELECT arm, scope, count(coherence) AS features, avg(coherence) AS mean, median(coherence) AS median,
                   min(coherence) AS min, max(coherence) AS max
            FROM scoped GROUP BY arm, scope, k ORDER BY arm, k""").df()


def arm_summary(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per arm: features, medical candidates, coherence mean / median over scored features, dead features."""
    return con.execute("""
        SELECT arm, count(*) AS features, count(*) FILTER (WHERE is_candidate) AS candidates,
               count(*) FILTER (WHERE candidate_by IN ('decoder', 'both')) AS candidates_by_decoder,
               count(*) FILTER (WHERE candidate_by IN ('fired', 'both')) AS candidates_by_firing,
               avg(coherence) AS coherence_mean, median(coherence) AS coherence_median,
               count(*) FILTER (WHERE n_fired = 0) AS dead
        FROM features GROUP BY arm ORDER BY arm""").df()


def candidate_activation_moments(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per arm, mean and variance of every non-zero per-token activation of the medical candidates' features,
    pooled exactly from per-feature sums (the paper's Figure 2: its μ and σ² per model)."""
    return con.execute("""
        SELECT arm, count(*) AS features, sum(n_fired) AS activations,
               sum(sum_act) / sum(n_fired) AS mean_act,
               sum(sum_sq_act) / sum(n_fired) - pow(sum(sum_act) / sum(n_fired), 2) AS var_act
        FROM features WHERE is_candidate AND n_fired > 0 GROUP BY arm ORDER BY arm""").df()


def token_sets(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """token_set, source, n_rows, n_tokens: what each token set is made of, source by source (corpus order)."""
    return con.execute("SELECT token_set, source, n_rows, n_tokens FROM token_sets ORDER BY token_set, position").df()


def stage_token_sets(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """"arm/stage" -> the token set the arm's stage measured on (a pair's: `pair_token_sets`)."""
    rows = con.execute("SELECT arm || '/' || stage, token_set FROM stages "
                       "WHERE arm IS NOT NULL AND token_set IS NOT NULL").fetchall()
    return dict(rows)


def steering_table(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Paper Table 1 per arm and measure (one per arm: a run replaces the arm's rows): features tested, passing by
    the paper's rule (mean steered similarity > mean unsteered), share; then the random control (core.steer_controls;
    NULL where none was run): how many beat the mean of their random directions, how many pass both ways and their
    share in percent, and what the texts were scored against (core.steer_scores.TARGETS, features per target); the
    mean steered / unsteered / random similarity over features and the mean steered / unsteered perplexity under
    the unsteered model (NaN means left out). The control's columns are named as the Overview shows them."""
    return con.execute("""
        WITH targets AS (
            SELECT arm, measure, string_agg(target || ' ' || n, ', ' ORDER BY n DESC, target)
                       AS scored_against
            FROM (SELECT arm, measure, target, count(*) AS n FROM steer_features GROUP BY ALL) GROUP BY ALL)
        SELECT arm, measure, count(*) AS features, count(*) FILTER (WHERE passing) AS passing,
               count(*) FILTER (WHERE passing) / count(*) AS share,
               CASE WHEN count(beats_random) > 0 THEN count(*) FILTER (WHERE beats_random) END AS "beats random",
               CASE WHEN count(passing_controlled) > 0 THEN count(*) FILTER (WHERE passing_controlled) END
                   AS "passing, beats unsteered and random",
               CASE WHEN count(passing_controlled) > 0
                    THEN round(100 * count(*) FILTER (WHERE passing_controlled) / count(*), 1) END
                   AS "share passing both (%)",
               any_value(t.scored_against) AS "scored against",
               avg(mean_steered) FILTER (WHERE NOT isnan(mean_steered)) AS mean_steered,
               avg(mean_unsteered) FILTER (WHERE NOT isnan(mean_unsteered)) AS mean_unsteered,
               avg(mean_random) FILTER (WHERE NOT isnan(mean_random)) AS "mean random",
               avg(mean_steered_perplexity) FILTER (WHERE NOT isnan(mean_steered_perplexity)) AS steered_perplexity,
               avg(mean_unsteered_perplexity) FILTER (WHERE NOT isnan(mean_unsteered_perplexity))
                   AS unsteered_perplexity
        FROM steer_features JOIN targets t USING (arm, measure) GROUP BY arm, measure ORDER BY arm, measure""").df()


def log_densities(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """arm, log10 density of every feature that fired (dead features counted apart, in `dead`)."""
    return con.execute("""
        SELECT arm, log10(frac_nonzero) AS log10_density FROM features WHERE frac_nonzero > 0""").df()


def features_to_explain(con: duckdb.DuckDBPyConnection, arm: str, which: str) -> list[int]:
    """Features of `arm` for `precompute explain`: "candidates" (>= 2 medical matches), "emerged" (the model
    diff's `emerge` in any pair the arm is in, once however many), or "all"; dead features (never fired on the
    corpus: no context to explain) left out."""
    emerged = ("EXISTS (SELECT 1 FROM feature_matches m WHERE m.arm = a.arm AND m.feature = a.feature "
               "AND m.status = 'emerge')")
    where = {"candidates": "w.is_candidate", "emerged": emerged, "all": "TRUE"}[which]
    rows = con.execute(f"""SELECT a.feature FROM feature_activations a LEFT JOIN feature_words w USING (arm, feature)
                           WHERE a.arm = ? AND a.n_fired > 0 AND {where} ORDER BY a.feature""", [arm]).fetchall()
    return [int(r[0]) for r in rows]
