"""Overview: the study at a glance. Until the precompute exists (issue #4), the demo's build report."""

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

if not data.features_db_exists(config):
    st.info(f"No features database yet at `{config.features_db}`. Build it with "
            f"`python -m precompute run --config {data.config_path()}` (or `make demo`). "
            "The precompute stages arrive with issue #4.")
    st.stop()
