"""Widgets shared by pages: a feature's panel (numbers, logit bars, histogram, contexts) and its label form."""

from __future__ import annotations


import pandas as pd
import streamlit as st

from core.database.feature_fields import HEADER
from core.matching import LINEAGE_SHARE
from dashboard.control import feature_control_text
from dashboard import charts, data, place, reads, render
from dashboard import state_keys as keys

LABEL_NAMES = {"medical": "medical", "not_medical": "not medical", "unsure": "unsure"}
ACTIVATION_NUMBERS = tuple(f.label for f in HEADER if f.table == "feature_activations")  # on the corpus's tokens
CANDIDATE_BY = {"decoder": "its top tokens (the paper's rule)", "fired": "the tokens it fires on",
                "both": "its top tokens and the tokens it fires on"}


def _number(x, digits: int = 3) -> str:
    return "—" if x is None or x != x else f"{x:.{digits}f}"


def by_arm(frame, measures: dict[str, tuple[str, str]], key: str | None = None) -> None:
    """Per-arm numbers with one column per arm and one row per measure, so the table fits any page width however
    many measures there are. measures: column -> (label, format); other columns keep their name and `{}`."""
    rows = []
    for column in (c for c in frame.columns if c != "arm"):
        label, fmt = measures.get(column, (column, "{}"))
        values = {str(arm): "—" if value is None or value is pd.NA or value != value else fmt.format(value)
                  for arm, value in zip(frame["arm"], frame[column])}
        rows.append({"measure": label, **values})
    st.dataframe(rows, hide_index=True, width="stretch", key=key, height=35 * (len(rows) + 1) + 3)  # no scrolling


def medical_matches(row: dict) -> str:
    """The medical matches by the rule that made the feature a candidate: its top tokens' ("3"), the tokens it
    fires on most ("9 fired"), or both ("2 top · 9 fired"); a non-candidate shows its top tokens' (the paper's)."""
    top, fired = int(row.get("med_matches") or 0), int(row.get("fired_med_matches") or 0)
    return {"fired": f"{fired} fired", "both": f"{top} top · {fired} fired"}.get(row.get("candidate_by"), str(top))


def feature_header(row: dict, arm: str, feature: int, compact: bool = False, team_label: bool = True) -> None:
    """The feature's numbers: a row of metrics, or one line when space is short (side by side). team_label=False
    hides the team's label (a second pass judges without seeing it)."""
    label = data.feature_label(arm, feature) if team_label else None
    numbers = {f.label: medical_matches(row) if f.name == "med_matches" else f.text(row.get(f.name)) for f in HEADER}
    numbers["label"] = LABEL_NAMES[label["label"]] if label else "—" if team_label else "hidden"
    measured_on = reads.study.token_set_text(reads.study.stage_token_sets().get(f"{arm}/activations"))
    if compact:
        st.markdown(" · ".join(f"{name} **{value}**" for name, value in numbers.items()))
    else:
        for col, (name, value) in zip(st.columns(len(numbers)), numbers.items()):
            col.metric(name, value, help=f"on {measured_on}" if name in ACTIVATION_NUMBERS else None)
    lines = []
    if row.get("matched_words") is not None and len(row["matched_words"]):
        lines.append("medical words in its top tokens: " + ", ".join(row["matched_words"]))
    if row.get("fired_matched_words") is not None and len(row["fired_matched_words"]):
        lines.append("medical words among the tokens it fires on most: " + ", ".join(row["fired_matched_words"]))
    if isinstance(row.get("candidate_by"), str):
        lines.append(f"medical candidate by {CANDIDATE_BY[row['candidate_by']]}")
    if lines:
        st.caption(" · ".join(lines), help=data.CANDIDATE_HELP if isinstance(row.get("candidate_by"), str) else None)
    diff_line(arm, feature)


def diff_line(arm: str, feature: int) -> None:
    """Its fate in each declared pair it is in, on that pair's tokens (a feature of an arm in two pairs has two):
    the matched feature in the other arm (a link to compare) and every other partner at or above the threshold,
    emerged / disappeared with its best sub-threshold correlation, or no fate at all when it was dead or too rare
    there. With more than one pair, each line names its pair."""
    fates = reads.diff.feature_fates(arm, feature)
    for fate in fates.to_dict("records"):
        pair = (fate["arm_a"], fate["arm_b"])
        _fate_line(fate, pair, arm, feature, f"{pair[0]} → {pair[1]} · " if len(fates) > 1 else "")


def _fate_line(fate: dict, pair: tuple[str, str], arm: str, feature: int, prefix: str) -> None:
    status, fired = fate["status"], fate.get("n_fired")
    fired = int(fired) if fired is not None and fired == fired else 0
    if status in ("dead", "rare"):
        recorded = reads.pairs.pair_metrics(pair).matching.min_firings
        min_firings = int(1 if recorded is None else recorded)
        st.caption(prefix + ("**dead on the diff's tokens**: it never fired on them, so it has no fate (persist, "
                             "emerge or disappear)" if status == "dead" else
                             f"**too rare on the diff's tokens** to match: it fired {fired:,} times there, fewer "
                             f"than {min_firings} (`diff.min_firings`), so it has no fate (persist, emerge or "
                             "disappear)"))
        return
    match, corr, other = fate.get("match_feature"), fate.get("match_corr"), fate["match_arm"]
    has_match = match is not None and match == match
    corr_text = f"{corr:.3f}" if corr is not None and corr == corr else "—"
    if status == "persist" and has_match:
        place.page_link(st, place.compare_link(arm, feature, other, int(match)), icon=":material/compare_arrows:",
                        label=f"{prefix}persists: {other} feature {int(match)} (correlation {corr_text}) — compare")
        _partners_line(arm, feature, other)
    else:
        verb = "emerged" if status == "emerge" else "disappeared"
        when = "in fine-tuning" if not prefix else f"between {pair[0]} and {pair[1]}"
        best = f"; its best match is {other} feature {int(match)} at {corr_text}" if has_match else ""
        threshold = reads.pairs.pair_metrics(pair).matching.threshold
        margin = (f", {threshold - corr:.3f} below the threshold {threshold:g}" if has_match and threshold is not None
                  and corr == corr else "")
        st.caption(f"{prefix}**{verb} {when}**{best}{margin}{feature_control_text(pair, arm, feature)}")
    _same_index_line(fate, pair, arm, feature, has_match and int(match) == feature)


def _same_index_line(fate: dict, pair: tuple[str, str], arm: str, feature: int, shown: bool) -> None:
    """When one SAE went on from the other (the pair's same-index share), feature i of the other arm is this
    feature before / after the fine-tune: its correlation and decoder cosine with it, and a link to compare."""
    corr, share = fate.get("same_index_corr"), reads.pairs.pair_metrics(pair).matching.same_index_share_b
    if shown or corr is None or corr != corr or share is None or share < LINEAGE_SHARE:
        return
    cos = fate.get("same_index_cos")
    cos_text = f", decoder cosine {cos:.3f}" if cos is not None and cos == cos else ""
    other = fate["match_arm"]
    place.page_link(st, place.compare_link(arm, feature, other, feature), icon=":material/history:",
                    label=f"same feature index in {other} (its SAE went on from the other): correlation {corr:.3f}"
                          f"{cos_text} — compare")


def _partners_line(arm: str, feature: int, other: str, shown: int = 12) -> None:
    """How many features of the other arm match this one at or above the threshold, and which."""
    partners = reads.diff.feature_partners(arm, feature, other)
    if partners.empty:
        return
    assigned = partners[partners["assigned"]]
    one_to_one = (f"one-to-one partner: feature {int(assigned['partner'].iloc[0])}" if len(assigned)
                  else "no one-to-one partner (each of its partners is assigned to a better match)")
    listed = ", ".join(f"{int(p.partner)} ({p.corr:.3f})" for p in partners.head(shown).itertuples())
    more = f", … {len(partners) - shown} more" if len(partners) > shown else ""
    st.caption(f"{len(partners)} partner(s) in {other} at or above the threshold: {listed}{more}; {one_to_one}")


def contexts_block(contexts, scale: float, limit: int | None = None, inspect: tuple[str, int] | None = None) -> None:
    """Contexts as shaded text, strongest first; scale = the activation drawn fully opaque. inspect: (arm, feature)
    whose contexts these are: each gets a link that opens its corpus row in Inspect, that feature shading, its max
    token chosen."""
    if contexts.empty:
        st.caption("It never fired on the corpus.")
        return
    for ctx in contexts.head(limit).itertuples() if limit else contexts.itertuples():
        row = {"row": int(ctx.row_index), "token": int(ctx.max_pos) - 1}  # the whole row, its max token chosen
        link = None if inspect is None else ("Inspect ↗", place.inspect_url(
            **row, feature=f"{inspect[0]}:{inspect[1]}"))
        st.markdown(render.context_html(ctx.tokens, ctx.acts, scale, ctx.max_index, label=f"{ctx.max_act:.3f}",
                                        link=link), unsafe_allow_html=True)


def explanation_block(arm: str, feature: int) -> None:
    """The feature's explanation in words and its scores, or how to make one."""
    found = data.feature_explanation(arm, feature)
    if found is None:
        st.caption(f"No explanation yet: `{data.explain_command(str(feature))}`")
        return
    simulation, detection = found["simulation"], found["detection"]
    st.markdown(f"**Explanation:** {found['explanation']}")
    st.caption(f"simulation r **{_number(simulation, 2)}** · detection **{_number(detection, 2)}** (balanced "
               f"accuracy, 0.5 chance) on {int(found['n_activating'])} activating + {int(found['n_non_activating'])} "
               f"quiet held-out contexts · {found['explainer']}, prompt v{int(found['prompt_version'])}",
               help="Simulation: Pearson r of the activations the judge predicts from the explanation against the "
                    "real ones, token by token (Bills et al. 2023). Detection: does the judge tell the contexts "
                    "where the feature fires from those where it does not.")


def feature_panel(arm: str, feature: int, x_range=None, y_max=None, key: str = "", narrow: bool = False) -> None:
    """Everything about one feature; x_range / y_max share axes between two panels; narrow: stacked."""
    row = reads.features.feature_row(arm, feature)
    if row is None:
        st.error(f"Arm {arm!r} has no feature {feature}.")
        return
    explanation_block(arm, feature)
    feature_header(row, arm, feature, compact=narrow)
    left, right = (st.container(), st.container()) if narrow else st.columns(2)
    left.markdown("**Logit weights** (top and bottom tokens of W_dec @ W_U)")
    left.plotly_chart(charts.logit_bars(reads.features.feature_tokens(arm, feature), x_range), key=f"logits{key}")
    with left:
        fires_most_on(reads.features.feature_fired_tokens(arm, feature))
    right.markdown("**Activation histogram** (non-zero activations over the corpus)")
    right.plotly_chart(charts.activation_histogram(reads.features.feature_histogram(arm, feature), y_max),
                       key=f"hist{key}")
    scale = float(row.get("max_act") or 0)
    st.markdown("**Top contexts** (tokens shaded by activation; the max token underlined)")
    contexts_block(reads.features.feature_contexts(arm, feature, "top"), scale, inspect=(arm, feature))
    intervals = reads.features.feature_contexts(arm, feature, "interval")
    with st.expander(f"Samples from activation intervals ({len(intervals)})"):
        st.caption("Each sample is one token the feature fired on with an activation in the interval, drawn at "
                   "random (seeded), shown underlined in its context; the number is that token's activation.")
        for (interval, low, high, n), group in intervals.groupby(
                ["interval", "interval_low", "interval_high", "n_intervals"], sort=False):
            st.markdown(f"*activation {interval_range(interval, low, high, n)}*")
            contexts_block(group, scale, inspect=(arm, feature))


def interval_range(interval: int, low: float, high: float, n_intervals: int) -> str:
    """An interval's range as the pass filled it: the first and last also hold every value below / above."""
    if interval == 0:
        return f"below {high:.3g}"
    if interval == n_intervals - 1:
        return f"{low:.3g} and above"
    return f"{low:.3g} – {high:.3g}"


def fires_most_on(fired) -> None:
    """The tokens a feature fires on most, by number of firings, with how selective it is on each."""
    st.markdown("**Fires most on** (tokens by number of firings over the corpus)")
    if fired.empty:
        st.caption("It never fired on the corpus.")
        return
    table = fired.assign(token=charts.token_labels(fired))[
        ["token", "count", "share_of_firings", "fires_on_share", "mean_act"]]
    st.dataframe(table, hide_index=True, width="stretch", height=35 * (len(table) + 1) + 3, column_config={
        "count": st.column_config.NumberColumn("firings", format="%d", help="tokens of this id it fired on"),
        "share_of_firings": st.column_config.NumberColumn("of its firings", format="percent"),
        "fires_on_share": st.column_config.NumberColumn(
            "of token", format="percent", help="share of this token's occurrences in the corpus it fires on"),
        "mean_act": st.column_config.NumberColumn("mean act.", format="%.3f", help="mean activation on it")})


def label_form(arm: str, feature: int) -> bool:
    """The label form, saved under the session's annotator (dashboard.labels_widgets.label_form); True when saved."""
    from dashboard import labels_widgets  # here, not at the top: labels_widgets imports this module

    return labels_widgets.label_form(arm, feature)


def undo_button() -> None:
    """Undo this session's last saved label (dashboard.labels_widgets.undo_button)."""
    from dashboard import labels_widgets  # here, not at the top: labels_widgets imports this module

    labels_widgets.undo_button()
