"""What changed (issue 22), one pair at a time: the activation difference lens, arm a's SAE features whose
activation changed most between the models, the persisting features whose output moved, candidates by fate."""

from __future__ import annotations

from core.database import changed_queries as q
from dashboard.reads.connection import study_read

lens_sites = study_read(q.lens_sites, columns=(
    "hook_name", "layer", "kind", "n_positions", "n_tokens", "norm", "norm_a", "norm_b", "medical_top20_a",
    "medical_top20_b", "random_medical_top20_a", "random_medical_top20_b"))
lens_vector = study_read(q.lens_vector)
lens_tokens = study_read(q.lens_tokens, columns=("direction", "rank", "token_id", "token", "logit", "is_medical"))
lens_features = study_read(q.lens_features, columns=(
    "sae_arm", "direction", "rank", "feature", "cosine", "top_text", "is_candidate"))
changed_features = study_read(q.changed_features, columns=(
    "feature", "change", "mean_a", "mean_b", "frac_a", "frac_b", "q", "fired_text", "top_text", "is_candidate",
    "control_change"))
change_enrichment = study_read(q.change_enrichment)
moved_persisting = study_read(q.moved_persisting, columns=(
    "feature", "match_feature", "match_corr", "decoder_cos", "logit_sim", "top_text_b", "top_text_a", "candidate_b",
    "candidate_a"))
candidates_by_fate = study_read(q.candidates_by_fate, columns=("fate", "features", "candidates", "share"))
