"""Overview: the study at a glance: its arms, the demo's build report, and the precompute's per-arm summary."""

import streamlit as st

from dashboard import charts, data

st.title("Overview")
try:
    config = data.study_config()
except data.StudyInputError as err:
    st.error(f"The study config cannot be read: {err}")
    st.stop()

st.caption(f"Study **{config.name}** — {config.description or config.source_path}")
st.dataframe([{"arm": arm.name, "model": arm.model, "SAE": arm.sae_source} for arm in config.arms],
             hide_index=True, width="stretch")

report = data.build_report(config)
if report is not None:
    st.subheader("The embedded demo pair")
    change = 100 * report["medical_perplexity_change"]
    st.markdown(f"Fine-tuning on medical text changed held-out **medical perplexity by {change:+.0f}%** "
                f"(seed {report['seed']}{', fast build' if report['fast'] else ''}).")
    st.plotly_chart(charts.perplexity_bars(data.perplexity_frame(report)), key="perplexity_chart")
    # The build's own check of the SAEs (on its held-out rows) is left out here: the quality stage measures the
    # same thing on the study's named tokens below, and two nearly equal numbers for one SAE read as a conflict.

data.require_database()

st.subheader("Features per arm")
overview = data.arm_overview(config)
st.dataframe(overview.drop(columns=["token_set", "dead_token_set"]), hide_index=True, width="stretch",
             column_config={"coherence_mean": st.column_config.NumberColumn("coherence mean", format="%.3f"),
                            "coherence_median": st.column_config.NumberColumn("coherence median", format="%.3f"),
                            "dead": st.column_config.NumberColumn("dead ¹", format="%d"),
                            "dead_fraction": st.column_config.NumberColumn("dead % ¹", format="percent"),
                            "explained_variance": st.column_config.NumberColumn("explained variance ²", format="%.3f"),
                            "ce_loss_recovered": st.column_config.NumberColumn("CE loss recovered ²", format="%.3f"),
                            "l0": st.column_config.NumberColumn("L0 ²", format="%.1f"),
                            "n_tokens": st.column_config.NumberColumn("tokens ²", format="%d")})
on_tokens = {column: " / ".join(data.token_set_text(name) for name in overview[column].dropna().unique())
             or "tokens not recorded" for column in ("dead_token_set", "token_set")}
st.caption(f"¹ never fired on {on_tokens['dead_token_set']}. ² the quality stage, on {on_tokens['token_set']}"
           + ". The Model diff page measures on its own token set and says which.")

st.subheader("The paper's results, regenerated")
st.caption("Our numbers from this study's database; the paper's beside them where it reports one. On the embedded "
           "demo the models are not the paper's, so only the shape of the analysis carries over; on "
           "configs/gpt2-medical.toml the same table is a reproduction.")
tables = data.paper_tables()
st.markdown("**Table 2 · semantic coherence** (eq. 1 over the top tokens; features with < 2 valid words have none)")
st.dataframe(tables["table2"], hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in ("mean", "median", "min", "max", "paper mean", "paper median")})
st.markdown("**Medical features** (≥ 2 medical words among the top tokens; the paper then verified them by hand)")
st.dataframe(tables["candidates"], hide_index=True, width="stretch",
             column_config={"share": st.column_config.NumberColumn(format="percent"),
                            "paper share": st.column_config.NumberColumn(format="percent")})
left, right = st.columns(2)
left.markdown("**Figure 1 · medical matches per feature**")
left.plotly_chart(charts.match_histogram(data.query("match_counts")), key="figure1")
right.markdown("**Figure 2 · activations of the medical candidates** (non-zero, all tokens pooled)")
right.plotly_chart(charts.candidate_activations(data.query("candidate_activation_histogram")), key="figure2")
right.dataframe(tables["moments"], hide_index=True, width="stretch",
                column_config={c: st.column_config.NumberColumn(format="%.4f")
                               for c in ("mean_act", "var_act", "paper mean", "paper var")})
st.markdown("**Table 1 · steering** (the causal test: `python -m precompute steer-eval`; a feature passes when "
            "its steered text is closer to its own top tokens than the unsteered text from the same seeds)")
table1 = data.query("steering_table")
if table1.empty:
    st.caption(f"Not run yet: `python -m precompute steer-eval --config {data.config_path()}`.")
else:
    from core import paper

    table1["paper passing"] = table1["arm"].map(lambda a: paper.STEERING.get(a, {}).get("passing"))
    table1["paper share"] = table1["arm"].map(
        lambda a: paper.STEERING[a]["passing"] / paper.STEERING[a]["features"] if a in paper.STEERING else None)
    table1["paper steered"] = table1["arm"].map(lambda a: paper.STEERING.get(a, {}).get("steered"))
    table1["paper unsteered"] = table1["arm"].map(lambda a: paper.STEERING.get(a, {}).get("unsteered"))
    table1 = table1.rename(columns={"mean_steered": "mean steered", "mean_unsteered": "mean unsteered"})
    st.dataframe(table1, hide_index=True, width="stretch",
                 column_config={"share": st.column_config.NumberColumn(format="percent"),
                                "paper share": st.column_config.NumberColumn(format="percent")})
    st.caption("The paper scored similarity with BERT embeddings and unseeded sampling, so its similarities are "
               "not on our scale (GloVe, same seeds); the passing share is the comparable number.")
st.markdown("**Coherence of all scored features**")
st.plotly_chart(charts.coherence_histogram(data.query("coherence_values")), key="coherence_histogram")
st.caption(f"Paper: {tables['source']}.")
