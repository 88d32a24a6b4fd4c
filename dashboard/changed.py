"""The sections of "What changed" (issue 22): each a measurement of one pair beside its control, with a link to its
evidence. The page (dashboard/views/changed.py) lays them out; the reads are core.database.changed_queries."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from core.change_summary import ChangeFacts, ControlFacts, LensFacts
from core.diff_control import controlled_counts, controlled_fates
from dashboard import data, place, reads, study
from dashboard.lens_steer import lens_steer_form
from dashboard import state_keys as keys

LINK = st.column_config.LinkColumn("", display_text="open")
KIND_NAMES = {"first": "first {k} tokens after BOS", "all": "all positions"}


def with_explanations(table: pd.DataFrame, arm: str, column: str = "feature") -> pd.DataFrame:
    """`table` with the current explanation of each of arm's features in it (blank where none was written)."""
    current = data.current_explanations()
    mine = current[current["arm"] == arm].set_index("feature")["explanation"] if not current.empty else pd.Series()
    return table.assign(explanation=[mine.get(int(f), "") for f in table[column]])  # blank, never "None"


def lens_section(pair: tuple[str, str]) -> LensFacts | None:
    """The difference lens: the mean of (b − a) residuals read through each unembedding; its random control."""
    arm_a, arm_b = pair
    st.subheader("The activation difference lens")
    sites = reads.changed.lens_sites(pair)
    if sites.empty:
        st.caption(f"No difference lens for {arm_a} → {arm_b} in this database (its `change` stage): run "
                   f"`python -m precompute run --config {study.config_path()}`.")
        return None
    k = int(sites.loc[sites["kind"] == "first", "n_positions"].max())
    c1, c2 = st.columns(2)
    hooks = list(dict.fromkeys(sites["hook_name"]))
    hook = c1.selectbox("Site", hooks, key=keys.CHANGED_LENS_SITE,
                        help="The SAE's hook and later layers (`diff.lens_layers`): the logit lens reads better "
                             "near the top of a model.")
    kind = c2.radio("Positions", ("first", "all"), key=keys.CHANGED_LENS_KIND, horizontal=True,
                    format_func=lambda name: KIND_NAMES[name].format(k=k))
    site = sites[(sites["hook_name"] == hook) & (sites["kind"] == kind)].iloc[0]
    st.markdown(f"Mean of ({arm_b} − {arm_a}) activations at `{hook}` over the {KIND_NAMES[kind].format(k=k)} of the "
                f"study's rows ({int(site.n_tokens):,} tokens): norm **{site.norm:.3g}**, against a typical "
                f"{arm_a} activation norm of {site.norm_a:.3g} there. Medical words among its top 20 tokens: "
                f"**{int(site.medical_top20_b)}** through {arm_b}'s unembedding, {int(site.medical_top20_a)} through "
                f"{arm_a}'s; **random directions of the same norm: {site.random_medical_top20_b:.1f}** "
                f"({site.random_medical_top20_a:.1f}).")
    if not site.norm > 0:
        st.markdown("The two models' activations are the same here: the lens has no direction to read.")
        return None
    left, right = st.columns(2)
    for col, unembed in ((left, arm_b), (right, arm_a)):
        tokens = reads.changed.lens_tokens(pair, hook, kind, unembed)
        col.markdown(f"Through **{unembed}**'s unembedding")
        col.dataframe(tokens.pivot(index="rank", columns="direction", values="token")[["top", "bottom"]]
                      .reset_index(drop=True)
                      .assign(medical=tokens[tokens["direction"] == "top"]["is_medical"].tolist() or None),
                      hide_index=True, width="stretch", key=f"lens_tokens_{unembed}",
                      column_config={"top": "toward (top)", "bottom": "away (bottom)",
                                     "medical": st.column_config.CheckboxColumn("top is medical")})
    lens_steer_form(pair, hook, kind)
    top = reads.changed.lens_tokens(pair, hook, kind, arm_b)
    words = tuple(top[top["direction"] == "top"]["token"].str.strip().head(8))
    layer = int(site.layer)
    return LensFacts(f"layer {layer}, {KIND_NAMES[kind].format(k=k)}", words, int(site.medical_top20_b),
                     float(site.random_medical_top20_b))


def change_section(pair: tuple[str, str], control: str | None) -> ChangeFacts | None:
    """arm_a's SAE on both models: its most increased and decreased features, each beside its q-value and the
    control pair's change for the same feature."""
    arm_a, arm_b = pair
    st.subheader(f"{arm_a}'s SAE features whose activation changed")
    if reads.changed.lens_sites(pair).empty:
        st.caption(f"No ranking for {arm_a} → {arm_b} in this database (its `change` stage).")
        return None
    risers = reads.changed.changed_features(pair, "increase", 15, control)
    if risers.empty and reads.changed.changed_features(pair, "decrease", 1, control).empty:
        st.markdown(f"No feature of {arm_a}'s SAE changes its activation between the two models on these tokens: "
                    "the models compute the same activations at the hook.")
        return None
    enrichment = reads.changed.change_enrichment(pair, 50)
    st.markdown(f"{arm_a}'s SAE encodes both models' activations on the same tokens; a feature's change is its mean "
                f"activation in {arm_b} minus in {arm_a}, tested row by row (q: Benjamini–Hochberg over the features). "
                f"Medical candidates: **{enrichment['top_increase']:.0%}** of the {enrichment['n_top']} most increased "
                f"against **{enrichment['live']:.0%}** of all {enrichment['n_live']:,} live features "
                f"({_ratio(enrichment['enrichment'])}).")
    columns = {"open": LINK, "change": st.column_config.NumberColumn(format="%.4f"),
               "q": st.column_config.NumberColumn(format="%.1e"),
               "control_change": st.column_config.NumberColumn(f"change on control ({control})", format="%.4f"),
               "fired_text": f"fires most on (in {arm_a})", "is_candidate": "medical candidate",
               "mean_a": st.column_config.NumberColumn(f"mean in {arm_a}", format="%.4f"),
               "mean_b": st.column_config.NumberColumn(f"mean in {arm_b}", format="%.4f"),
               "steer": st.column_config.LinkColumn("", display_text="steer")}
    for title, frame, key in ((f"Increased in {arm_b}", risers, "changed_up"),
                              (f"Decreased in {arm_b}", reads.changed.changed_features(pair, "decrease", 15, control),
                               "changed_down")):
        st.markdown(f"**{title}**")
        frame = with_explanations(frame, arm_a).assign(
            open=[place.feature_url(arm_a, f) for f in frame["feature"]],
            steer=[place.steer_url(arm_a, f) for f in frame["feature"]])
        shown = ["open", "steer", "feature", "change", "q", *(["control_change"] if control else []), "mean_a", "mean_b",
                 "fired_text", "is_candidate", "explanation"]
        st.dataframe(frame[shown], hide_index=True, width="stretch", key=key, column_config=columns)
    return ChangeFacts(tuple((int(r.feature), r.fired_text or "") for r in risers.head(3).itertuples()),
                       enrichment["top_increase"], enrichment["live"], enrichment["n_top"])


def _ratio(value: float) -> str:
    return "no live features" if value is None or math.isnan(value) else f"{value:.1f}× enriched"


def control_facts(pair: tuple[str, str], control: str | None, fdr: float) -> tuple[ControlFacts | None, pd.DataFrame]:
    """The fates beyond the control (numbers for the sentence) and the fine-tuned arm's emerged features beyond it."""
    if control is None:
        return None, pd.DataFrame()
    pair_rows, control_rows = reads.diff.fate_statistics(pair), reads.diff.fate_statistics((pair[0], control))
    if pair_rows.empty or control_rows.empty:
        return None, pd.DataFrame()
    controlled = controlled_fates(pair_rows, control_rows, pair, control, fdr)
    count = controlled_counts(pair_rows, control_rows, controlled, pair, control).set_index(["arm", "status"])
    facts = ControlFacts(control, *(int(count.loc[(pair[1], "emerge"), c]) for c in ("features", "beyond", "control")),
                         *(int(count.loc[(pair[0], "disappear"), c]) for c in ("features", "beyond", "control")))
    emerged = controlled[(controlled["arm"] == pair[1]) & controlled["beyond"] & (controlled["status"] == "emerge")]
    return facts, emerged.sort_values(["q", "match_corr", "feature"])


def emerged_section(pair: tuple[str, str], facts: ControlFacts | None, emerged: pd.DataFrame) -> None:
    arm_a, arm_b = pair
    st.subheader("Emerged beyond the control")
    if facts is None:
        st.caption("No control pair to read the fates against (Model diff says how to declare one).")
        return
    st.markdown(f"**{facts.emerged_beyond:,}** of {arm_b}'s {facts.emerged:,} emerged features changed more than SAE "
                f"training alone changes a feature (the control pair {arm_a} → {facts.control} gives "
                f"{facts.control_emerged:,} emerged). [Model diff]({place_diff(pair)}) has every fate.")
    top = reads.features.top_texts(arm_b, emerged["feature"].head(15).tolist())
    table = with_explanations(emerged.head(15), arm_b).assign(
        open=lambda f: [place.feature_url(arm_b, x) for x in f["feature"]],
        top_tokens=lambda f: [top.get(int(x)) for x in f["feature"]])
    st.dataframe(table[["open", "feature", "match_corr", "q", "top_tokens", "explanation"]], hide_index=True,
                 width="stretch", key="changed_emerged",
                 column_config={"open": LINK, "match_corr": st.column_config.NumberColumn("best corr.", format="%.3f"),
                                "q": st.column_config.NumberColumn("q (FDR)", format="%.3f")})


def place_diff(pair: tuple[str, str]) -> str:
    return place.diff_url(pair)


def moved_section(pair: tuple[str, str]) -> None:
    arm_a, arm_b = pair
    st.subheader("Persisting features whose output moved")
    moved = reads.changed.moved_persisting(pair, 12)
    if moved.empty:
        st.caption("No persisting features with a decoder cosine in this pair.")
        return
    fates = reads.changed.candidates_by_fate(pair)
    share = {row.fate: f"{row.share:.0%} ({int(row.candidates)} of {int(row.features):,})" for row in fates.itertuples()}
    st.markdown(f"Medical candidates among {arm_b}'s persisting features: **{share.get('persist', '—')}**; among their "
                f"distinct {arm_a} partners: **{share.get('partners', '—')}**; among emerged ones: "
                f"**{share.get('emerge', '—')}**. A feature that kept its activation pattern can still write something "
                "else: the lowest decoder cosines with the partner first.")
    moved = moved.assign(compare=[place.compare_url(arm_b, f, arm_a, m)
                                  for f, m in zip(moved["feature"], moved["match_feature"])])
    st.dataframe(moved[["compare", "feature", "match_feature", "match_corr", "decoder_cos", "top_text_b", "top_text_a",
                        "candidate_b", "candidate_a"]], hide_index=True, width="stretch", key="changed_moved",
                 column_config={"compare": st.column_config.LinkColumn("", display_text="compare"),
                                "match_feature": f"partner in {arm_a}",
                                "match_corr": st.column_config.NumberColumn("act. corr.", format="%.3f"),
                                "decoder_cos": st.column_config.NumberColumn("decoder cos.", format="%.3f"),
                                "top_text_b": f"top tokens in {arm_b}", "top_text_a": f"partner's in {arm_a}",
                                "candidate_b": "candidate", "candidate_a": "partner candidate"})
