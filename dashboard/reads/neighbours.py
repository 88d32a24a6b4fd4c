"""Features near a feature: by decoder cosine in its own SAE and in the other arm's, by activation correlation;
and the feature map (one UMAP layout of a pair's decoder directions)."""

from __future__ import annotations

from core.database import neighbour_queries as q
from dashboard.reads.connection import study_read

own_neighbours = study_read(q.own_neighbours, columns=("rank", "neighbour", "cosine", "top_tokens"))
cross_neighbours = study_read(q.cross_neighbours, columns=(
    "rank", "neighbour_arm", "neighbour", "cosine", "corr", "top_tokens"))
correlated_features = study_read(q.correlated_features, columns=("partner_arm", "partner", "corr", "cosine",
                                                                 "top_tokens"))
feature_map = study_read(q.feature_map, columns=(
    "arm", "feature", "x", "y", "fate", "is_candidate", "coherence", "top_tokens"))
decoder_stage_notes = study_read(q.decoder_stage_notes)
