"""Overview: the study at a glance: its arms, the demo's build report, and the precompute's per-arm summary."""

import streamlit as st

from core.errors import StudyInputError
from core.token_kinds import FIRST_TOKENS
from dashboard import charts, data, labels_widgets, place, reads, study, widgets


def candidate_words(config) -> None:
    """Which medical words make the candidates, and how to take a generic one out of the vocabulary."""
    words = reads.features.candidate_word_table()
    with st.expander(f"Medical words behind the candidates ({len(words)} words)", expanded=True):
        st.caption("Per word: in how many of each arm's medical candidates it is among the words that made them "
                   "candidates (of the top tokens, or of the tokens they fire on, by the study's rule ³), and how many "
                   "of those would stop being candidates without it (fewer than 2 other matches by every rule that "
                   "made them one). Generic words that make many candidates inflate the count.")
        st.dataframe(words, hide_index=True, width="stretch", height=280)
        exclude = config.medical_vocabulary.exclude
        command = f"python -m precompute run --config {study.config_path()}"
        if exclude:
            st.markdown(f"To take a word out: add it (one per line) to `{exclude}` and run `{command}`. Only the "
                        "words and activations stages run again; the demo is not rebuilt.")
        else:
            st.markdown("To take words out: list them one per line in a file, set `exclude = \"that file\"` under "
                        f"`[medical_vocabulary]` in `{study.config_path()}`, and run `{command}`.")


def perplexity_by_kind(report: dict) -> None:
    """The fine-tune's perplexity change split by kind of predicted token: whether it learned its domain's text or
    where the corpus's documents end."""
    frame = data.perplexity_kind_frame(report)
    if frame is None:
        st.caption("This build predates perplexity by token kind; rebuild the demo to see it.")
        return
    text = frame[frame["kind"] == "text"].set_index("text")["change"]
    st.markdown(f"On **text tokens** (not a document separator, not one of a document's first {FIRST_TOKENS} "
                f"tokens) fine-tuning changed held-out medical perplexity by **{100 * text['medical']:+.1f}%** and "
                f"general by **{100 * text['general']:+.1f}%**: a fine-tune about its domain lowers medical at "
                f"least twice as much (the build's quality floor). Separators and a document's first tokens are "
                "learned from any corpus of short documents, so they are shown apart.")
    st.dataframe(frame, hide_index=True, width="stretch", key="perplexity_by_kind",
                 column_config={"kind": "token kind", "text": "held-out text",
                                "tokens": st.column_config.NumberColumn(format="%d"),
                                "base": st.column_config.NumberColumn("base perplexity", format="%.1f"),
                                "fine-tuned": st.column_config.NumberColumn("fine-tuned perplexity", format="%.1f"),
                                "change": st.column_config.NumberColumn(format="percent")})


def steering_table() -> None:
    """Paper Table 1: the causal test, beside the paper's numbers."""
    st.markdown("**Table 1 · steering** (the causal test: `python -m precompute steer-eval`). The paper's rule: a "
                "feature passes when its steered text is closer to its tokens than the unsteered text from the same "
                "seeds. Ours adds the control: it must also beat the same push along random directions of the same "
                "norm (`steering.random_directions`), or a push in any direction would pass.")
    table1 = reads.steering.steering_table()
    if table1.empty:
        st.caption(f"Not run yet: `python -m precompute steer-eval --config {study.config_path()}`.")
        return
    from core import paper

    table1["paper passing"] = table1["arm"].map(lambda a: paper.STEERING.get(a, {}).get("passing"))
    table1["paper share"] = table1["arm"].map(
        lambda a: paper.STEERING[a]["passing"] / paper.STEERING[a]["features"] if a in paper.STEERING else None)
    table1["paper steered"] = table1["arm"].map(lambda a: paper.STEERING.get(a, {}).get("steered"))
    table1["paper unsteered"] = table1["arm"].map(lambda a: paper.STEERING.get(a, {}).get("unsteered"))
    widgets.by_arm(table1, {"measure": ("scored by", "{}"), "features": ("features tested", "{:,}"),
                            "passing": ("passing (paper's rule)", "{:,}"),
                            "share": ("share passing (paper's rule)", "{:.1%}"),
                            "mean_steered": ("mean steered", "{:.4f}"),
                            "mean_unsteered": ("mean unsteered", "{:.4f}"),
                            "steered_perplexity": ("perplexity steered", "{:.1f}"),
                            "unsteered_perplexity": ("perplexity unsteered", "{:.1f}"),
                            "paper passing": ("paper passing", "{:,}"), "paper share": ("paper share", "{:.1%}"),
                            "paper steered": ("paper steered", "{:.4f}"),
                            "paper unsteered": ("paper unsteered", "{:.4f}")})
    from core.steer_scores import MEASURES

    used = "; ".join(f"{arm}: {measure}, {MEASURES.get(measure, 'unknown')}"
                     for arm, measure in zip(table1["arm"], table1["measure"]))
    st.caption(f"Similarity measure ({used}). Perplexity: of each text under the unsteered model, mean over "
               "features (higher: less fluent). The paper scored similarity with BERT embeddings and unseeded "
               "sampling, so its similarities are not on our scale (same seeds here); the passing share is the "
               "comparable number.")


st.title("Overview")
try:
    config = study.study_config()
except StudyInputError as err:
    st.error(f"The study config cannot be read: {err}")
    st.stop()

st.caption(f"Study **{config.name}** — {config.description or config.source_path}")
start = st.columns(3)
place.page_link(start[0], place.FEATURES, "Browse the features", icon=":material/table_rows:")
place.page_link(start[1], place.LABEL, "Label the medical candidates", icon=":material/label:")
place.page_link(start[2], place.DIFF, "What fine-tuning changed (model diff)", icon=":material/difference:")
st.dataframe([{"arm": arm.name, "model": arm.model, "SAE": arm.sae_source} for arm in config.arms],
             hide_index=True, width="stretch")

report = study.build_report(config)
if report is not None:
    st.subheader("The fine-tune, as built (build-demo's report)")
    if report.get("finetune_warning"):  # the build's own last line: the "fine-tune" made its domain worse
        st.warning(f"**This fine-tune did not learn its domain.** {report['finetune_warning']}")
    changes = data.perplexity_changes(report)
    general = f" and **general perplexity by {100 * changes['general']:+.0f}%**" if "general" in changes else ""
    st.markdown(f"Fine-tuning on medical text changed held-out **medical perplexity by "
                f"{100 * report['medical_perplexity_change']:+.0f}%**{general} "
                f"(seed {report['seed']}{', fast build' if report['fast'] else ''}).")
    st.plotly_chart(charts.perplexity_bars(data.perplexity_frame(report)), key="perplexity_chart")
    perplexity_by_kind(report)
    # The build's own check of the SAEs (on its held-out rows) is left out here: the quality stage measures the
    # same thing on the study's named tokens below, and two nearly equal numbers for one SAE read as a conflict.

data.require_database()

st.subheader("Features per arm")
overview = reads.study.arm_overview()
widgets.by_arm(overview.drop(columns=["token_set", "dead_token_set"]), {
    "hook_name": ("hook", "{}"), "d_sae": ("features in the SAE", "{:,}"), "features": ("features", "{:,}"),
    "candidates": ("medical candidates ³", "{:,}"), "candidates_by_decoder": ("… by their top tokens", "{:,}"),
    "candidates_by_firing": ("… by the tokens they fire on", "{:,}"), "coherence_mean": ("coherence mean", "{:.3f}"),
    "coherence_median": ("coherence median", "{:.3f}"), "dead": ("dead features ¹", "{:,}"),
    "dead_fraction": ("dead features, share ¹", "{:.1%}"), "l0": ("L0 ²", "{:.1f}"),
    "explained_variance": ("explained variance ²", "{:.3f}"), "ce_loss_recovered": ("CE loss recovered ²", "{:.3f}"),
    "n_tokens": ("tokens ²", "{:,.0f}")})
on_tokens = {column: " / ".join(reads.study.token_set_text(name) for name in overview[column].dropna().unique())
             or "tokens not recorded" for column in ("dead_token_set", "token_set")}
st.caption(f"¹ never fired on {on_tokens['dead_token_set']}. ² the quality stage, on {on_tokens['token_set']}"
           + ". The Model diff page measures on its own token set and says which. ³ this study's rule "
           + f"(`[medical_vocabulary] candidates = \"{config.medical_vocabulary.candidates}\"`): "
           + data.candidate_rule_text(config) + ".")

st.subheader("The paper's results, regenerated")
st.caption("Our numbers from this study's database; the paper's beside them where it reports one. On the embedded "
           "demo the models are not the paper's, so only the shape of the analysis carries over; on "
           "configs/gpt2-medical.toml the same table is a reproduction.")
tables = data.paper_tables()
st.markdown("**Table 2 · semantic coherence** (eq. 1 over the top tokens; features with < 2 valid words have none)")
st.dataframe(tables["table2"], hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in ("mean", "median", "min", "max", "paper mean", "paper median")})
st.markdown("**Medical features** (by this study's rule, ³ above; the paper's is ≥ 2 medical words among the top "
            "tokens, which it then verified by hand)")
st.dataframe(tables["candidates"], hide_index=True, width="stretch",
             column_config={"share": st.column_config.NumberColumn(format="percent"),
                            "paper share": st.column_config.NumberColumn(format="percent")})
labels_widgets.label_counts_section()  # by the team's stated rule, as Table 2's "labelled medical"
candidate_words(config)
steering_table()
left, right = st.columns(2)
left.markdown("**Figure 1 · medical matches per feature**")
left.plotly_chart(charts.match_histogram(reads.features.match_counts()), key="figure1")
right.markdown("**Figure 2 · activations of the medical candidates** (non-zero, all tokens pooled)")
right.plotly_chart(charts.candidate_activations(reads.features.candidate_activation_histogram()), key="figure2")
st.dataframe(tables["moments"], hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in ("mean_act", "var_act", "paper mean", "paper var")})
st.markdown("**Coherence of all scored features**")
st.plotly_chart(charts.coherence_histogram(reads.features.coherence_values()), key="coherence_histogram")
st.caption(f"Paper: {tables['source']}.")
