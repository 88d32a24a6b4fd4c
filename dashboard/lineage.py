"""The Model diff page's "feature i on both sides", shown when one SAE was trained on from the other (the
matching stage's same_index_share at least core.matching.LINEAGE_SHARE): then feature i of both arms is one
feature the fine-tune may have moved, and its correlation with itself says how far, with no threshold."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, place, reads


def same_index_section(pair: tuple[str, str], share: float, threshold: float) -> None:
    arm_a, arm_b = pair
    st.subheader("Feature i on both sides")
    st.markdown(
        f"**{share:.0%}** of {arm_b}'s features with a best match find it at **their own index** in {arm_a}; SAEs "
        f"trained apart would do so about once in {reads.study.d_sae(arm_a):,}. {arm_b}'s SAE was trained on from "
        f"{arm_a}'s, so feature *i* is one feature in both arms, which the fine-tune may have moved. The fates "
        f"above call two features the same at a correlation of {threshold:g}; here each feature is read against "
        "itself instead: how much of its activation pattern it kept (and how far its decoder direction turned).")
    frame = reads.diff.same_index_correlations(pair)
    frame = frame[frame["arm"] == arm_b]
    if frame.empty:
        st.caption("No feature fired in both arms on these tokens.")
        return
    stats = frame.groupby("status", sort=False).agg(
        features=("feature", "size"), median_corr=("same_index_corr", "median"),
        lowest_quarter=("same_index_corr", lambda c: c.quantile(0.25)), median_cos=("same_index_cos", "median"))
    order = [s for s in ("persist", "emerge") if s in stats.index]
    left, right = st.columns([1, 1])
    left.markdown(f"{arm_b}'s features that fired in both arms, by fate:")
    left.dataframe(stats.loc[order].reset_index(), hide_index=True, width="stretch", key="same_index_stats",
                   column_config={"median_corr": st.column_config.NumberColumn("median corr. with own index",
                                                                               format="%.3f"),
                                  "lowest_quarter": st.column_config.NumberColumn("25th percentile", format="%.3f"),
                                  "median_cos": st.column_config.NumberColumn("median decoder cos.", format="%.3f")})
    if "emerge" in stats.index:
        left.caption(f"An *emerged* feature here is mostly {arm_a}'s own feature drifted below {threshold:g}, not a "
                     "new one: read its correlation with its own index, and open the least correlated below.")
    right.plotly_chart(charts.same_index_histogram(frame, threshold), key="same_index_hist")
    changed = reads.diff.same_index_changes(pair, 15)
    changed = changed.assign(compare=[place.compare_url(arm_a, f, arm_b, f) for f in changed["feature"]])
    st.markdown(f"**Changed most**: {arm_b}'s features least correlated with their own index (both fired)")
    st.dataframe(changed[["compare", "feature", "status", "same_index_corr", "same_index_cos", "fired_a", "fired_b"]],
                 hide_index=True, width="stretch",
                 key="same_index_changed",
                 column_config={"compare": st.column_config.LinkColumn("", display_text="compare"),
                                "same_index_corr": st.column_config.NumberColumn("corr. with own index",
                                                                                 format="%.3f"),
                                "same_index_cos": st.column_config.NumberColumn("decoder cos.", format="%.3f"),
                                "fired_a": f"fires most on in {arm_a}", "fired_b": f"fires most on in {arm_b}"})
