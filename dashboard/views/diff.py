"""Model diff: which features persist, emerge or disappear between the two arms of a declared pair (base →
fine-tune, checkpoint → checkpoint), and how far each SAE transfers. The pair is chosen here and kept in the URL."""

import streamlit as st

from core.matching import LINEAGE_SHARE
from dashboard import charts, data, place, reads, study
from dashboard.control import CONTROL_COLUMNS, control_columns, control_section, with_control
from dashboard.divergence import divergence_section
from dashboard.lineage import same_index_section
from dashboard import state_keys as keys

config = data.require_database()
st.title("Model diff")
pairs = reads.pairs.pairs()
if not pairs:
    st.info(f"This database compares no pair of arms: the study has {len(config.arms)} arm(s), and its pairs "
            "(`[[pairs]]` in the config; by default every other arm against the first) need two. Add an arm and "
            f"run `python -m precompute run --config {study.config_path()}`.")
    st.stop()
fields = [place.pair_field(keys.DIFF_PAIR, pairs)]
place.restore_or_stop("diff", fields)  # a link to a pair the study does not declare: one line
roles = reads.pairs.pair_controls()
pair = st.columns([1, 3])[0].selectbox("Pair", pairs, format_func=lambda p: reads.pairs.pair_label(p, roles),
                                       key=keys.DIFF_PAIR,
                                       help="The study's declared pairs (`[[pairs]]`): the first arm is the earlier "
                                            "model; then each declared control's pair.")
place.remember("diff", fields)
arm_a, arm_b = pair
counts = reads.diff.diff_counts(pair)
notes = reads.pairs.diff_notes(pair)
for note in notes.itertuples():
    st.warning(f"**{note.stage}** was skipped: {note.note}")
if counts.empty and notes.empty:
    st.info(f"No model-diff results for {arm_a} → {arm_b} in this database yet: run `python -m precompute run "
            f"--config {study.config_path()}` (its similarity, transfer and matching stages).")
    st.stop()

metrics = reads.pairs.pair_metrics(pair)
measured_on = reads.pairs.pair_token_sets(pair)
diff_set = measured_on.get("matching") or measured_on.get("transfer")
corpus_set = reads.study.stage_token_sets().get(f"{arm_a}/activations")
st.markdown(f"**Tokens compared** (both models, the same rows): {reads.study.token_set_text(diff_set, detail=True)}.")

matching = metrics.matching
threshold = config.diff.match_threshold if matching.threshold is None else matching.threshold
min_firings = int(config.diff.min_firings if matching.min_firings is None else matching.min_firings)
if not counts.empty:
    st.markdown(f"Two features are **the same** when their activations over these tokens correlate at least "
                f"**{threshold:g}**: a {arm_a} feature without such a match *disappears*, a {arm_b} one *emerges*, "
                f"matched ones *persist*. A feature that never fired on these tokens is **dead**, one that fired "
                f"fewer than **{min_firings}** times (`diff.min_firings`) is **rare**: neither has a fate, and both "
                "are left out of the shares, the tables of emerged and disappeared features and the Label queue.")
    controlled = control_section(pair, roles.get(pair, {}), config.diff.fdr, threshold)
    st.markdown("**Raw counts** (at the threshold, before any control):")
    table = counts.pivot(index="arm", columns="status", values="features").fillna(0).astype(int)
    st.dataframe(table.reset_index(), hide_index=True, key="diff_count_table")
    left, right = st.columns(2)
    left.plotly_chart(charts.diff_status_bars(counts[counts["share"].notna()]), key="diff_status")
    right.plotly_chart(charts.match_correlation_histogram(reads.diff.match_correlations(pair), threshold),
                       key="match_corr")

    same_share = matching.same_index_share_b
    lineage = same_share is not None and same_share >= LINEAGE_SHARE
    if lineage:
        same_index_section(pair, same_share, threshold)

    st.subheader("Best match and one-to-one")
    persisting = reads.diff.diff_features(pair, "persist", "frac_nonzero", True, 100_000)
    for arm, other in ((arm_b, arm_a), (arm_a, arm_b)):
        group = persisting[persisting["arm"] == arm]
        st.markdown(f"- Best-match view: **{len(group):,}** persisting {arm} features match "
                    f"**{group['match_feature'].nunique():,}** distinct {other} features.")
    st.markdown(f"- One-to-one assignment (no feature used twice, maximum total correlation over the "
                f"{int(matching.n_pairs or 0):,} pairs at or above {threshold:g}): "
                f"**{int(matching.n_assigned or 0):,}** pairs, total correlation "
                f"{matching.assigned_corr_total or 0:,.1f}.")
    many = reads.diff.many_to_one(pair)
    if not many.empty:
        st.markdown("**Many-to-one**: features that are the partner of several features of the other arm")
        st.dataframe(many, hide_index=True, width="stretch", key="many_to_one",
                     column_config={"n_partners": "partners", "assigned_feature": "one-to-one partner",
                                    "assigned_corr": st.column_config.NumberColumn("its corr.", format="%.3f")})
    c1, c2, _ = st.columns([1, 1, 3])
    c1.download_button("Matching as CSV", reads.diff.matching_export_file(pair, "csv"), f"matching-{arm_a}-{arm_b}.csv",
                       "text/csv", key=keys.DIFF_EXPORT_CSV)
    c2.download_button("Matching as Parquet", reads.diff.matching_export_file(pair, "parquet"),
                       f"matching-{arm_a}-{arm_b}.parquet",
                       "application/vnd.apache.parquet", key=keys.DIFF_EXPORT_PARQUET)

    st.subheader("Features by fate")
    c1, c2 = st.columns([1, 3])
    status = c1.radio("Show", ("emerge", "disappear", "persist", "rare", "dead"), key=keys.DIFF_STATUS)
    sort_names = {"frac_nonzero": "density (corpus) ↓", "coherence": "coherence ↓", "med_matches": "medical matches ↓",
                  "n_partners": "partners ↓"} | ({"same_index_corr": "corr. with own index ↑ (changed most)"}
                                                 if lineage else {})
    sort = c2.selectbox("Sort by", tuple(sort_names), format_func=sort_names.get, key=keys.DIFF_SORT)
    table = with_control(reads.diff.diff_features(pair, status, sort, sort != "same_index_corr", 200), controlled)
    table = table.assign(open=[place.feature_url(a, f) for a, f in zip(table["arm"], table["feature"])],
                         compare=[place.compare_url(a, f, ma, mf) if mf == mf and mf is not None else None
                                  for a, f, ma, mf in zip(table["arm"], table["feature"], table["match_arm"],
                                                          table["match_feature"])],
                         own_index=[place.compare_url(a, f, ma, f)
                                    for a, f, ma in zip(table["arm"], table["feature"], table["match_arm"])])
    own = ["own_index", "same_index_corr", "same_index_cos"] if lineage else []
    st.dataframe(table[["open", "compare", *own[:1], "arm", "feature", "top_tokens", "frac_nonzero", "diff_n_fired",
                        "coherence", "med_matches", "match_feature", "match_corr", *control_columns(controlled),
                        *own[1:], "n_partners", "partners", "assigned_feature"]], hide_index=True, width="stretch",
                 key="diff_table",
                 column_config={"open": st.column_config.LinkColumn("", display_text="open"),
                                "compare": st.column_config.LinkColumn("", display_text="compare with best match"),
                                "own_index": st.column_config.LinkColumn("", display_text="compare with own index"),
                                "same_index_corr": st.column_config.NumberColumn("corr. with own index",
                                                                                 format="%.3f"),
                                "same_index_cos": st.column_config.NumberColumn("decoder cos. with own index",
                                                                                format="%.3f"),
                                "frac_nonzero": st.column_config.NumberColumn("density (corpus)", format="%.2e"),
                                "diff_n_fired": st.column_config.NumberColumn("firings (diff tokens)"),
                                "coherence": st.column_config.NumberColumn(format="%.3f"),
                                "match_corr": st.column_config.NumberColumn("best corr.", format="%.3f"),
                                **CONTROL_COLUMNS,
                                "n_partners": "partners", "partners": "partners ≥ threshold",
                                "assigned_feature": "one-to-one partner"})

divergence_section(arm_a, arm_b, reads.study.token_set_text(measured_on.get("divergence")), metrics.divergence)

hist = reads.diff.similarity_hist(pair)
if not hist.empty:
    st.subheader("Activation similarity at the hook")
    st.markdown(f"Same tokens through both models: mean per-token cosine **{metrics.similarity.mean_cosine or 0:.3f}**, "
                f"mean Euclidean distance **{metrics.similarity.mean_distance or 0:.3g}** "
                f"(on {reads.study.token_set_text(measured_on.get('similarity'))}).")
    c1, c2, c3 = st.columns(3)
    c1.plotly_chart(charts.similarity_histogram(hist, "cosine"), key="sim_cos")
    c2.plotly_chart(charts.similarity_histogram(hist, "distance"), key="sim_dist")
    c3.plotly_chart(charts.similarity_by_position(reads.diff.similarity_by_position(pair)), key="sim_pos")

st.subheader("Feature densities")
overview = reads.study.arm_overview().set_index("arm").loc[list(pair)]
st.caption(f"Share of tokens on which each feature fires, per arm, on {reads.study.token_set_text(corpus_set)}; dead "
           "features (never fired there): " + ", ".join(f"{arm} {int(row.dead):,} ({row.dead_fraction:.1%})"
                                                         for arm, row in overview.iterrows()) + ".")
densities = reads.features.log_densities()
st.plotly_chart(charts.log_density_histogram(densities[densities["arm"].isin(pair)]), key="log_density")

transfer = reads.diff.transfer_table(pair)
if not transfer.empty:
    st.subheader("SAE transfer")
    st.caption(f"Each SAE on its own model and on the other one, on {reads.study.token_set_text(measured_on.get('transfer'))}"
               f"; positions whose activation norm exceeds {config.diff.outlier_factor:g}× the median are left out "
               "of the reconstruction numbers. The Overview's numbers are the quality stage's, on the token set it "
               "names.")
    st.dataframe(transfer, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in transfer.columns
                                if c not in ("sae_arm", "model_arm", "n_outliers", "n_tokens", "dead_fraction")}
                 | {"dead_fraction": st.column_config.NumberColumn("dead (these tokens)", format="percent"),
                    "n_tokens": st.column_config.NumberColumn("tokens", format="%d")})
    for col, sae_arm in zip(st.columns(2), pair):
        other = arm_b if sae_arm == arm_a else arm_a
        pearson = metrics.transfer.log_density_pearson.get(sae_arm)
        col.markdown(f"**SAE {sae_arm}: feature densities on {sae_arm} vs {other}** — Pearson r of log10 "
                     f"densities {pearson:.3f}" if pearson is not None else f"**SAE {sae_arm}**")
        col.plotly_chart(charts.density_scatter(reads.diff.transfer_densities(pair, sae_arm), sae_arm, other),
                         key=f"density_{sae_arm}")
