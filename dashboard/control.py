"""The Model diff's lead (issue 22): each fate's count beside the control pair's, and how many features are beyond the
control at the study's FDR. The control pair (a, control) runs a's model with an SAE trained on as b's was, so its
"emerged" and "disappeared" features are what SAE training alone does; only what goes beyond it is the fine-tune's."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.diff_control import controlled_counts, controlled_fates
from core.matching import LINEAGE_SHARE
from dashboard import charts, reads, study

NO_CONTROL = ("No control is declared for this pair, so nothing below separates what the fine-tune did from what "
              "training an SAE again does to any SAE. Declare one: `control = \"arm\"` in the pair's `[[pairs]]` table, "
              "an arm that runs {a}'s model with an SAE trained on as {b}'s was (`build-demo` trains one, "
              "`base_resae`; README: *Controls*).")


def control_section(pair: tuple[str, str], roles: dict[str, str | None], fdr: float,
                    threshold: float) -> pd.DataFrame | None:
    """Draw the lead; return the pair's features with stat, exceedance, q, beyond (None: no control to read).
    `roles`: the pair's {"control", "controls"} (`reads.pairs.pair_controls`)."""
    arm_a, arm_b = pair
    control = roles.get("control")
    if roles.get("controls"):
        st.info(f"This is the **control pair** of {arm_a} → {roles['controls']}: {arm_b} runs {arm_a}'s model with an "
                f"SAE trained on as {roles['controls']}'s was, so every difference below is what SAE training alone "
                "does, the noise floor the fine-tune's pair is read against.")
        return None
    if control is None:
        st.info(NO_CONTROL.format(a=arm_a, b=arm_b))
        return None
    pair_rows = reads.diff.fate_statistics(pair)
    control_rows = reads.diff.fate_statistics((arm_a, control))
    if control_rows.empty:
        st.warning(f"The control pair {arm_a} → {control} has no matching results in this database yet: run "
                   f"`python -m precompute run --config {study.config_path()}`.")
        return None
    controlled = controlled_fates(pair_rows, control_rows, pair, control, fdr)
    counts = controlled_counts(pair_rows, control_rows, controlled, pair, control)
    _lead(counts, pair, control, fdr)
    left, right = st.columns([1, 1])
    # a's features persist or disappear, b's persist or emerge: the other two rows are zero by definition
    table = counts[((counts["arm"] == arm_a) & (counts["status"] != "emerge"))
                   | ((counts["arm"] == arm_b) & (counts["status"] != "disappear"))].rename(columns={"arm": "side"})
    left.dataframe(table[["side", "status", "features", "control", "beyond"]], hide_index=True, width="stretch",
                   key="control_counts",
                   column_config={"features": st.column_config.NumberColumn(f"{arm_a} → {arm_b}"),
                                  "control": st.column_config.NumberColumn(f"control {arm_a} → {control}"),
                                  "beyond": st.column_config.NumberColumn(f"beyond control (FDR {fdr:.0%})")})
    both = pd.concat([pair_rows[pair_rows["arm"] == arm_b].assign(group="pair"),
                      control_rows[control_rows["arm"] == control].assign(group="control")])
    both = both[both["status"].isin(("persist", "emerge", "disappear"))]
    right.plotly_chart(charts.control_histogram(both, "match_corr", threshold), key="control_hist")
    right.caption(f"{arm_b}'s features' best-match correlation with {arm_a} against {control}'s (the control "
                  f"SAE's) with {arm_a}, each as a share of its own features.")
    _same_index_line(pair_rows, control_rows, pair, control, fdr)
    return controlled


def _same_index_line(pair_rows: pd.DataFrame, control_rows: pd.DataFrame, pair: tuple[str, str], control: str,
                     fdr: float) -> None:
    """When b's SAE went on from a's (feature i is one feature in both), the drift of each feature from its own
    index against the control SAE's drift from the same index."""
    arm_a, arm_b = pair
    share = reads.pairs.pair_metrics(pair).matching.same_index_share_b
    if share is None or share < LINEAGE_SHARE or control_rows["same_index_corr"].isna().all():
        return
    drift = controlled_fates(pair_rows, control_rows, pair, control, fdr, column="same_index_corr")
    mine = drift[(drift["arm"] == arm_b) & drift["q"].notna()]
    theirs = control_rows[(control_rows["arm"] == control) & control_rows["same_index_corr"].notna()]
    st.markdown(f"**Feature i against itself** ({arm_b}'s SAE went on from {arm_a}'s): **{int(mine['beyond'].sum()):,}** "
                f"of {len(mine):,} {arm_b} features drifted from their own index further than the control SAE's "
                f"features do (median correlation with the own index: {arm_b} "
                f"{mine['same_index_corr'].median():.3f}, control {theirs['same_index_corr'].median():.3f}).")


def _lead(counts: pd.DataFrame, pair: tuple[str, str], control: str, fdr: float) -> None:
    arm_a, arm_b = pair
    count = counts.set_index(["arm", "status"])
    emerged, control_emerged = count.loc[(arm_b, "emerge"), "features"], count.loc[(arm_b, "emerge"), "control"]
    gone, control_gone = count.loc[(arm_a, "disappear"), "features"], count.loc[(arm_a, "disappear"), "control"]
    st.markdown(
        f"**Beyond the control** (false-discovery rate {fdr:.0%}, `diff.fdr`): "
        f"**{count.loc[(arm_b, 'emerge'), 'beyond']:,}** of {arm_b}'s {emerged:,} emerged features and "
        f"**{count.loc[(arm_a, 'disappear'), 'beyond']:,}** of {arm_a}'s {gone:,} disappeared ones changed more than "
        f"SAE training alone changes a feature. The control pair {arm_a} → {control} ({arm_a}'s model, an SAE "
        f"trained on as {arm_b}'s was) gives emerged {control_emerged:,} · disappeared {control_gone:,}. A feature "
        f"is beyond the control when the share of the control's features at least as far from their best match, "
        f"scaled by the number of features called (Benjamini–Hochberg: an empirical FDR), is at most {fdr:.0%}.")


# The fate table's columns from the control (Model diff), by name: whether the feature is beyond it, and where it falls.
CONTROL_COLUMNS = {
    "beyond": st.column_config.CheckboxColumn("beyond control", help="Changed more than SAE training alone changes a "
                                              "feature, at the study's false-discovery rate"),
    "exceedance": st.column_config.NumberColumn("control at least as far", format="percent",
                                                help="Share of the control pair's features at least as far from "
                                                     "their best match (0%: beyond every one)"),
    "q": st.column_config.NumberColumn("q (FDR)", format="%.3f")}


def with_control(table: pd.DataFrame, controlled: pd.DataFrame | None) -> pd.DataFrame:
    """The fate table with each feature's beyond / exceedance / q from `control_section` (unchanged without one)."""
    if controlled is None:
        return table
    return table.merge(controlled[["arm", "feature", "beyond", "exceedance", "q"]], on=["arm", "feature"], how="left")


def control_columns(controlled: pd.DataFrame | None) -> list[str]:
    return [] if controlled is None else list(CONTROL_COLUMNS)


def feature_control_text(pair: tuple[str, str], arm: str, feature: int) -> str:
    """" — beyond the control (...)" or " — within the control (...)" for one feature of a pair with a control
    (the Feature page's fate line); "" when the pair has none or the feature no statistic."""
    roles = reads.pairs.pair_controls().get(tuple(pair), {})
    control = roles.get("control")
    if control is None:
        return ""
    control_rows = reads.diff.fate_statistics((pair[0], control))
    if control_rows.empty:
        return ""
    controlled = controlled_fates(reads.diff.fate_statistics(pair), control_rows, pair, control,
                                  study.study_config().diff.fdr)
    row = controlled[(controlled["arm"] == arm) & (controlled["feature"] == int(feature))]
    if row.empty or row["q"].isna().all():
        return ""
    row = row.iloc[0]
    share = f"{row.exceedance:.0%} of the control {pair[0]} → {control}'s features are at least as far from their match"
    if row.beyond:
        return f" — **beyond the control** ({share}; q {row.q:.3f})"
    return f" — **within the control**: SAE training alone moves features this far ({share}; q {row.q:.2f})"
