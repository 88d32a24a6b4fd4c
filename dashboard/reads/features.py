"""Features: one feature's numbers, tokens, histogram and contexts; the Features table (filtered and sorted in
DuckDB); and the per-arm figures of the paper (Table 2, Figures 1 and 2, the words behind the candidates)."""

from __future__ import annotations

import pandas as pd

from core.database import pair_queries
from core.database import queries as q
from dashboard.reads.connection import study_read
from dashboard.reads.study import arm_names

feature_row = study_read(q.feature_row)
feature_tokens = study_read(q.feature_tokens, columns=("kind", "rank", "token_id", "token", "value"))
feature_histogram = study_read(q.feature_histogram, columns=("low", "high", "count"))
feature_contexts = study_read(q.feature_contexts, columns=(
    "rank", "interval", "interval_low", "interval_high", "max_act", "row_index", "max_pos", "max_index", "tokens",
    "acts", "n_intervals"))
feature_fired_tokens = study_read(q.feature_fired_tokens, columns=(
    "rank", "token_id", "token", "count", "share_of_firings", "mean_act", "occurrences", "fires_on_share"))
top_token_overlap = study_read(q.top_token_overlap, columns=("token", "left_rank", "right_rank"))
top_texts = study_read(pair_queries.top_texts, missing={})
features_page = study_read(q.features_page, columns=q.FEATURES_PAGE_COLUMNS)
features_count = study_read(q.features_count)
coherence_values = study_read(q.coherence_values, columns=("arm", "feature", "coherence", "is_candidate"))
coherence_table = study_read(q.coherence_table, columns=("arm", "scope", "features", "mean", "median", "min", "max"))
log_densities = study_read(q.log_densities, columns=("arm", "log10_density"))
match_counts = study_read(q.match_counts, columns=("arm", "med_matches", "features"))
candidate_words = study_read(q.candidate_words, columns=("arm", "word", "candidates", "share", "needed_by"))
candidate_activation_histogram = study_read(q.candidate_activation_histogram, columns=("arm", "low", "high", "count"))
candidate_activation_moments = study_read(q.candidate_activation_moments, columns=(
    "arm", "features", "activations", "mean_act", "var_act"))


def candidate_word_table() -> pd.DataFrame:
    """One row per medical word in any arm's candidates: per arm, in how many candidates it is and how many
    would stop being candidates without it; most frequent first (`candidate_words`)."""
    words = candidate_words()
    if words.empty:
        return words
    wide = words.pivot(index="word", columns="arm", values=["candidates", "needed_by"]).fillna(0).astype(int)
    arms = [arm for arm in arm_names() if arm in set(words["arm"])]
    wide = wide[[(what, arm) for arm in arms for what in ("candidates", "needed_by")]]
    wide.columns = [f"{arm} {'candidates' if what == 'candidates' else 'needing it'}" for what, arm in wide.columns]
    total = wide[[f"{arm} candidates" for arm in arms]].sum(axis=1).sort_values(ascending=False, kind="stable")
    return wide.loc[total.index].reset_index()
