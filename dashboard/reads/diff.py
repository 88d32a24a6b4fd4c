"""One pair's model diff: fates and matches, activation similarity, SAE transfer, feature i on both sides, and
where the two models' predictions part (the divergence stage)."""

from __future__ import annotations

from core.database import diff_queries as q
from core.database import pair_queries
from dashboard.reads.connection import study_read

Pair = tuple[str, str]

fate_statistics = study_read(q.fate_statistics, columns=("arm", "feature", "status", "match_corr", "same_index_corr"))
diff_counts = study_read(q.diff_counts, columns=("arm", "status", "features", "share"))
match_correlations = study_read(q.match_correlations, columns=("arm", "feature", "match_corr"))
diff_features = study_read(q.diff_features, columns=(
    "arm", "feature", "top_tokens", "frac_nonzero", "diff_n_fired", "coherence", "med_matches", "is_candidate",
    "match_arm", "match_feature", "match_corr", "n_partners", "partners", "assigned_feature", "assigned_corr",
    "same_index_corr", "same_index_cos", "max_act", "mean_act", "llr", "n_valid"))
same_index_correlations = study_read(q.same_index_correlations, columns=(
    "arm", "feature", "status", "same_index_corr", "same_index_cos"))
same_index_changes = study_read(q.same_index_changes, columns=(
    "feature", "status", "same_index_corr", "same_index_cos", "fired_a", "fired_b"))
feature_fates = study_read(q.feature_fates, columns=(
    "arm_a", "arm_b", "match_arm", "match_feature", "match_corr", "status", "n_fired", "n_partners",
    "assigned_feature", "assigned_corr", "same_index_corr", "same_index_cos"))
feature_partners = study_read(q.feature_partners, columns=("partner_arm", "partner", "corr", "assigned"))
many_to_one = study_read(q.many_to_one, columns=(
    "arm", "feature", "n_partners", "top_tokens", "assigned_feature", "assigned_corr"))
matching_export = study_read(q.matching_export, columns=(
    "arm", "feature", "status", "n_fired_diff_tokens", "other_arm", "best_match", "best_corr", "n_partners",
    "partners", "partner_corrs", "one_to_one_match", "one_to_one_corr", "decoder_cos", "logit_sim",
    "same_index_corr", "same_index_cos"))
similarity_hist = study_read(q.similarity_hist, columns=("kind", "low", "high", "count"))
similarity_by_position = study_read(q.similarity_by_position, columns=("position", "mean_cosine", "mean_distance"))
transfer_table = study_read(q.transfer_table, columns=("sae_arm", "model_arm"))  # then one column per metric
transfer_densities = study_read(q.transfer_densities, columns=("feature", "own_density", "other_density"))
# Read by Inspect and the Feature page; empty (or None) on a database built without the stage.
persisting_partners = study_read(pair_queries.persisting_partners, missing={})
divergent_contexts = study_read(pair_queries.divergent_contexts, missing=None, columns=(
    "rank", "row_index", "mean_kl", "max_kl", "max_index", "tokens", "kl", "logprob_change", "boundary"))
divergence_rows = study_read(pair_queries.divergence_rows, missing=None, columns=(
    "row_index", "mean_kl", "max_kl", "max_index"))
enriched_features = study_read(pair_queries.enriched_features, missing=None, columns=(
    "feature", "mean_divergent", "mean_elsewhere", "ratio", "fired_divergent", "fired_elsewhere", "top_text"))


def matching_export_file(pair: Pair, fmt: str) -> bytes:
    """One pair's whole matching (`matching_export`) as CSV (partner lists joined by ";") or Parquet."""
    frame = matching_export(pair)
    if fmt == "parquet":
        return frame.to_parquet(index=False)
    flat = frame.assign(**{c: frame[c].map(lambda xs: ";".join(f"{x:.4g}" if isinstance(x, float) else str(x)
                                                              for x in xs)) for c in ("partners", "partner_corrs")})
    return flat.to_csv(index=False).encode()
