"""Model diff: which features persist, emerge or disappear through fine-tuning, and how far each SAE transfers."""

import streamlit as st

from dashboard import charts, data

config = data.require_database()
st.title("Model diff")
if len(config.arms) != 2:
    st.info("The model diff compares the two arms of a two-arm study; this study has "
            f"{len(config.arms)} arm(s).")
    st.stop()
counts = data.query("diff_counts")
notes = data.query("diff_notes")
for note in notes.itertuples():
    st.warning(f"**{note.stage}** was skipped: {note.note}")
if counts.empty and notes.empty:
    st.info(f"No model-diff results in this database yet: run `python -m precompute run --config "
            f"{data.config_path()}` (its similarity, transfer and matching stages).")
    st.stop()

metrics = data.query("pair_metrics")
threshold = metrics.get("matching.threshold", config.diff.match_threshold)
if not counts.empty:
    st.markdown(f"Two features are **the same** when their activations over the same "
                f"{int(metrics.get('matching.n_tokens', 0)):,} tokens correlate at least **{threshold:g}**: a base "
                "feature without such a match *disappears*, a fine-tuned one *emerges*, matched ones *persist*.")
    left, right = st.columns(2)
    left.plotly_chart(charts.diff_status_bars(counts), key="diff_status")
    right.plotly_chart(charts.match_correlation_histogram(data.query("match_correlations"), threshold),
                       key="match_corr")
    st.subheader("Emerged and disappeared features")
    c1, c2 = st.columns([1, 3])
    status = c1.radio("Show", ("emerge", "disappear", "persist"), horizontal=False, key="diff_status_choice")
    sort = c2.selectbox("Sort by", ("frac_nonzero", "coherence", "med_matches"), key="diff_sort")
    table = data.query("diff_features", status, sort, True, 200)
    table = table.assign(open=[f"/feature?arm={a}&feature={f}" for a, f in zip(table["arm"], table["feature"])],
                         compare=[f"/compare?left_arm={a}&left_feature={f}&right_arm={ma}&right_feature={mf}"
                                  if mf == mf and mf is not None else None
                                  for a, f, ma, mf in zip(table["arm"], table["feature"], table["match_arm"],
                                                          table["match_feature"])])
    st.dataframe(table[["open", "compare", "arm", "feature", "top_tokens", "frac_nonzero", "coherence", "med_matches",
                        "match_feature", "match_corr"]], hide_index=True, width="stretch", key="diff_table",
                 column_config={"open": st.column_config.LinkColumn("", display_text="open"),
                                "compare": st.column_config.LinkColumn("", display_text="compare with best match"),
                                "frac_nonzero": st.column_config.NumberColumn("density", format="%.2e"),
                                "coherence": st.column_config.NumberColumn(format="%.3f"),
                                "match_corr": st.column_config.NumberColumn("best corr.", format="%.3f")})

hist = data.query("similarity_hist")
if not hist.empty:
    st.subheader("Activation similarity at the hook")
    st.markdown(f"Same tokens through both models: mean per-token cosine **{metrics.get('similarity.mean_cosine', 0):.3f}**, "
                f"mean Euclidean distance **{metrics.get('similarity.mean_distance', 0):.3g}**.")
    c1, c2, c3 = st.columns(3)
    c1.plotly_chart(charts.similarity_histogram(hist, "cosine"), key="sim_cos")
    c2.plotly_chart(charts.similarity_histogram(hist, "distance"), key="sim_dist")
    c3.plotly_chart(charts.similarity_by_position(data.query("similarity_by_position")), key="sim_pos")

st.subheader("Feature densities")
dead = data.arm_overview(config).set_index("arm")["dead"]
st.caption("Share of tokens on which each feature fires, per arm; dead features (never fired): "
           + ", ".join(f"{arm} {int(n):,}" for arm, n in dead.items()) + ".")
st.plotly_chart(charts.log_density_histogram(data.query("log_densities")), key="log_density")

transfer = data.query("transfer_table")
if not transfer.empty:
    st.subheader("SAE transfer")
    st.caption("Each SAE on its own model and on the other one; positions whose activation norm exceeds "
               f"{config.diff.outlier_factor:g}× the median are left out of the reconstruction numbers.")
    st.dataframe(transfer, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in transfer.columns
                                if c not in ("sae_arm", "model_arm", "n_outliers", "n_tokens")})
    arms = [arm.name for arm in config.arms]
    for col, sae_arm in zip(st.columns(2), arms):
        other = arms[1] if sae_arm == arms[0] else arms[0]
        pearson = metrics.get(f"transfer.log_density_pearson_{sae_arm}")
        col.markdown(f"**SAE {sae_arm}: feature densities on {sae_arm} vs {other}** — Pearson r of log10 "
                     f"densities {pearson:.3f}" if pearson is not None else f"**SAE {sae_arm}**")
        col.plotly_chart(charts.density_scatter(data.query("transfer_densities", sae_arm), sae_arm, other),
                         key=f"density_{sae_arm}")
