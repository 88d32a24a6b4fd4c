"""The Model diff page's "where the models diverge": the corpus rows where the pair's next-token predictions part
most (each opens in Inspect on its row) and the features most active on the most divergent tokens (each opens its
Feature page). The divergence precompute stage wrote them (core.divergence)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.database.metrics import DivergenceMetrics
from dashboard import live, place, reads, render, study

KL_SHADE = "76, 120, 168"  # Inspect's KL blue
BEFORE, AFTER = 30, 10  # tokens shown around a row's most divergent one (Inspect shows the whole row)


def inspect_link(row: int, token: int, arm_a: str, arm_b: str) -> str:
    return place.inspect_url(row=row, token=token, base=arm_a, finetuned=arm_b)


def _number(value: float | None) -> float:
    return float("nan") if value is None else value


def _share(metrics: DivergenceMetrics) -> float:
    """The share of tokens counted divergent (1% before the stage recorded it)."""
    return 0.01 if metrics.divergent_share is None else metrics.divergent_share


def divergence_section(arm_a: str, arm_b: str, token_set_text: str, metrics: DivergenceMetrics) -> None:
    """`metrics`: the pair's divergence stage metrics."""
    st.subheader("Where the models diverge")
    contexts = reads.diff.divergent_contexts(arm_a, arm_b, 20)
    if contexts is None or contexts.empty:
        why = "its divergence stage was skipped (see above)" if metrics.skipped else (
            f"run `python -m precompute run --config {study.config_path()}` (its divergence stage)")
        st.caption(f"No divergence results for {arm_a} → {arm_b} in this database: {why}.")
        return
    kind = "text tokens" if metrics.boundary_share is not None else "tokens"  # a stage from before issue 22 ranked all
    st.markdown(
        f"Per token, KL({arm_a} ‖ {arm_b}) of the two models' next-token distributions, on {token_set_text}: mean "
        f"**{_number(metrics.mean_kl):.4f}** nats. The **{int(metrics.n_divergent or 0):,}** most "
        f"divergent {kind} (the top {_share(metrics):.0%}) have KL ≥ "
        f"**{_number(metrics.divergent_threshold):.3f}**.")
    if kind == "text tokens":
        st.markdown(boundary_sentence(metrics))
    rows = reads.diff.divergence_rows(arm_a, arm_b)
    by_source = rows.assign(source=live.row_sources(rows["row_index"].tolist())).groupby("source", sort=False)
    in_top = pd.Series(live.row_sources(contexts["row_index"].tolist())).value_counts()
    sources = pd.DataFrame({"rows": by_source.size(), "mean KL": by_source["mean_kl"].mean(),
                            f"of the top {len(contexts)} rows": in_top.reindex(by_source.size().index).fillna(0)})
    st.dataframe(sources.astype({f"of the top {len(contexts)} rows": int}).rename_axis("source").reset_index(),
                 hide_index=True, key="divergence_sources",
                 column_config={"mean KL": st.column_config.NumberColumn(format="%.4f")})
    how = ("mean KL over the row's text tokens; every token shaded by its KL, boundary tokens too, the most "
           "divergent text token" if kind == "text tokens" else "mean KL over the row; tokens shaded by KL, the most "
           "divergent")
    st.markdown(f"**Most divergent rows** ({how} underlined, {BEFORE} before and {AFTER} after it; Inspect opens the "
                "whole row)")
    scale = float(contexts["max_kl"].max())
    sources = live.row_sources(contexts["row_index"].tolist())
    for ctx, source in zip(contexts.itertuples(), sources):
        start = max(0, ctx.max_index - BEFORE)
        stop = ctx.max_index + AFTER + 1
        label = f"#{ctx.rank + 1} · row {ctx.row_index} ({source}) · mean KL {ctx.mean_kl:.3f}"
        link = ("Inspect ↗", inspect_link(ctx.row_index, ctx.max_index, arm_a, arm_b))
        st.markdown(render.context_html(list(ctx.tokens[start:stop]), list(ctx.kl[start:stop]), scale,
                                        ctx.max_index - start, label=label, shade=KL_SHADE, link=link),
                    unsafe_allow_html=True)
    enriched_features(arm_a, arm_b, kind)


def boundary_sentence(metrics: DivergenceMetrics) -> str:
    """What the divergence leaves out, with its figures: the boundary tokens' share of all tokens and of the most
    divergent ones, and their mean KL against the text's (the divergence stage's metrics, core.boundaries)."""
    share, top = _share(metrics), _number(metrics.boundary_share_of_top)
    of_top = (f"**{top:.0%}** of the {share:.0%} most divergent tokens of all" if top == top else
              "none of the tokens diverges")
    return (f"**Boundary tokens** (those that predict a document separator or one of a document's first "
            f"{int(metrics.boundary_tokens or 0)} tokens) are **{_number(metrics.boundary_share):.0%}** of tokens and "
            f"{of_top}, with mean KL **{_number(metrics.mean_kl_boundary):.4f}** against "
            f"**{_number(metrics.mean_kl_text):.4f}** on text tokens. They show where documents end, not "
            "how the text is predicted: the rows and features below rank text tokens only.")


def enriched_features(arm_a: str, arm_b: str, kind: str = "tokens") -> None:
    """kind: what the divergent set was ranked among ("text tokens", or "tokens" before issue 22)."""
    st.markdown(f"**Features that live where the models diverge**: mean activation on the most divergent {kind} "
                f"against every other one of the {kind} (largest difference first; at least 3 firings there)")
    for column, arm in zip(st.columns(2), (arm_a, arm_b)):
        table = reads.diff.enriched_features(arm_a, arm_b, arm, 15)
        column.markdown(f"*{arm}*")
        if table is None or table.empty:
            column.caption("No feature fired on the divergent tokens.")
            continue
        table.insert(0, "open", [place.feature_url(arm, f) for f in table["feature"]])
        column.dataframe(table, hide_index=True, width="stretch", key=f"divergence_features_{arm}",
                         column_config={"open": st.column_config.LinkColumn("", display_text="open"),
                                        "mean_divergent": st.column_config.NumberColumn("mean there", format="%.3f"),
                                        "mean_elsewhere": st.column_config.NumberColumn("elsewhere", format="%.3f"),
                                        "ratio": st.column_config.NumberColumn("×", format="%.1f"),
                                        "fired_divergent": "firings there", "fired_elsewhere": "elsewhere",
                                        "top_text": "top tokens"})
