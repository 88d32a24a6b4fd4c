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
    st.markdown("**SAEs** (held-out text of both domains, BOS position excluded)")
    st.dataframe(data.sae_frame(report), hide_index=True, width="stretch",
                 column_config={"explained variance": st.column_config.NumberColumn(format="%.3f"),
                                "dead features": st.column_config.NumberColumn(format="percent"),
                                "L0": st.column_config.NumberColumn(format="%.1f"),
                                "MSE": st.column_config.NumberColumn(format="%.4f")})

data.require_database()

st.subheader("Features per arm")
st.dataframe(data.arm_overview(config), hide_index=True, width="stretch",
             column_config={"coherence_mean": st.column_config.NumberColumn("coherence mean", format="%.3f"),
                            "coherence_median": st.column_config.NumberColumn("coherence median", format="%.3f"),
                            "explained_variance": st.column_config.NumberColumn("explained variance", format="%.3f"),
                            "ce_loss_recovered": st.column_config.NumberColumn("CE loss recovered", format="%.3f"),
                            "l0": st.column_config.NumberColumn("L0", format="%.1f"),
                            "n_tokens": st.column_config.NumberColumn("tokens", format="%d")})
