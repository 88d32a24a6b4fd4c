"""Widgets shared by pages: a feature's panel (numbers, logit bars, histogram, contexts) and its label form."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, data, render
from dashboard import state_keys as keys

LABEL_NAMES = {"medical": "medical", "not_medical": "not medical", "unsure": "unsure"}


def _number(x, digits: int = 3) -> str:
    return "—" if x is None or x != x else f"{x:.{digits}f}"


def _density(x) -> str:
    x = x or 0.0
    return f"{100 * x:.2g}%" if x >= 1e-3 else f"{x:.1e}"


def by_arm(frame, measures: dict[str, tuple[str, str]], key: str | None = None) -> None:
    """Per-arm numbers with one column per arm and one row per measure, so the table fits any page width however
    many measures there are. measures: column -> (label, format); other columns keep their name and `{}`."""
    rows = []
    for column in (c for c in frame.columns if c != "arm"):
        label, fmt = measures.get(column, (column, "{}"))
        values = {str(arm): "—" if value is None or value != value else fmt.format(value)
                  for arm, value in zip(frame["arm"], frame[column])}
        rows.append({"measure": label, **values})
    st.dataframe(rows, hide_index=True, width="stretch", key=key, height=35 * (len(rows) + 1) + 3)  # no scrolling


def feature_header(row: dict, arm: str, feature: int, compact: bool = False) -> None:
    """The feature's numbers: a row of metrics, or one line when space is short (side by side)."""
    label = data.feature_label(arm, feature)
    numbers = {
        "coherence": _number(row.get("coherence")), "medical matches": str(int(row.get("med_matches") or 0)),
        "density": _density(row.get("frac_nonzero")), "max activation": _number(row.get("max_act")),
        "mean (non-zero)": _number(row.get("mean_act")), "label": LABEL_NAMES[label["label"]] if label else "—",
    }
    if compact:
        st.markdown(" · ".join(f"{name} **{value}**" for name, value in numbers.items()))
    else:
        for col, (name, value) in zip(st.columns(len(numbers)), numbers.items()):
            col.metric(name, value)
    if row.get("matched_words") is not None and len(row["matched_words"]):
        st.caption("medical words in its top tokens: " + ", ".join(row["matched_words"]))
    diff_line(row, arm, feature)


def diff_line(row: dict, arm: str, feature: int) -> None:
    """Its fate through fine-tuning: the matched feature in the other arm (a link to compare), or emerged /
    disappeared with its best sub-threshold correlation."""
    status = row.get("diff_status")
    if status is None or status != status:
        return
    match, corr = row.get("match_feature"), row.get("match_corr")
    has_match = match is not None and match == match
    corr_text = f"{corr:.3f}" if corr is not None and corr == corr else "—"
    if status == "persist" and has_match:
        st.page_link("views/compare.py", icon=":material/compare_arrows:",
                     label=f"persists: {row['match_arm']} feature {int(match)} (correlation {corr_text}) — compare",
                     query_params={"left_arm": arm, "left_feature": str(feature),
                                   "right_arm": row["match_arm"], "right_feature": str(int(match))})
    else:
        verb = "emerged in fine-tuning" if status == "emerge" else "disappeared in fine-tuning"
        best = f"; its best match is {row['match_arm']} feature {int(match)} at {corr_text}" if has_match else ""
        st.caption(f"**{verb}**{best}")


def contexts_block(contexts, scale: float, limit: int | None = None) -> None:
    """Contexts as shaded text, strongest first; scale = the activation drawn fully opaque."""
    if contexts.empty:
        st.caption("It never fired on the corpus.")
        return
    for ctx in contexts.head(limit).itertuples() if limit else contexts.itertuples():
        st.markdown(render.context_html(ctx.tokens, ctx.acts, scale, ctx.max_index, label=f"{ctx.max_act:.3f}"),
                    unsafe_allow_html=True)


def feature_panel(arm: str, feature: int, x_range=None, y_max=None, key: str = "", narrow: bool = False) -> None:
    """Everything about one feature; x_range / y_max share axes between two panels; narrow: stacked."""
    row = data.query("feature_row", arm, feature)
    if row is None:
        st.error(f"Arm {arm!r} has no feature {feature}.")
        return
    feature_header(row, arm, feature, compact=narrow)
    left, right = (st.container(), st.container()) if narrow else st.columns(2)
    left.markdown("**Logit weights** (top and bottom tokens of W_dec @ W_U)")
    left.plotly_chart(charts.logit_bars(data.query("feature_tokens", arm, feature), x_range), key=f"logits{key}")
    with left:
        fires_most_on(data.query("feature_fired_tokens", arm, feature))
    right.markdown("**Activation histogram** (non-zero activations over the corpus)")
    right.plotly_chart(charts.activation_histogram(data.query("feature_histogram", arm, feature), y_max),
                       key=f"hist{key}")
    scale = float(row.get("max_act") or 0)
    st.markdown("**Top contexts** (tokens shaded by activation; the max token underlined)")
    contexts_block(data.query("feature_contexts", arm, feature, "top"), scale)
    intervals = data.query("feature_contexts", arm, feature, "interval")
    with st.expander(f"Samples from activation intervals ({len(intervals)})"):
        st.caption("Each sample is one token the feature fired on with an activation in the interval, drawn at "
                   "random (seeded), shown underlined in its context; the number is that token's activation.")
        for (interval, low, high, n), group in intervals.groupby(
                ["interval", "interval_low", "interval_high", "n_intervals"], sort=False):
            st.markdown(f"*activation {interval_range(interval, low, high, n)}*")
            contexts_block(group, scale)


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
    """Medical / not medical / unsure and a note; returns True when a label was saved."""
    current = data.feature_label(arm, feature)
    suffix = f"_{arm}_{feature}"
    options = list(LABEL_NAMES)
    choice = st.radio("Label", options, format_func=LABEL_NAMES.get, horizontal=True, key=keys.LABEL_CHOICE + suffix,
                      index=options.index(current["label"]) if current else 0)
    note = st.text_input("Note", value=current["note"] if current and current["note"] else "",
                         key=keys.LABEL_NOTE + suffix)
    if st.button("Save label", type="primary", key=keys.LABEL_SAVE + suffix):
        try:
            st.session_state[keys.LAST_LABEL_EVENT] = data.save_label(arm, feature, choice, note)
        except data.LabelWriteError as err:
            st.error(f"The label was not saved: {err}. Your choice and note are kept; try again.")
            return False
        st.toast(f"Saved: {arm} #{feature} is {LABEL_NAMES[choice]}")
        return True
    return False


def undo_button() -> None:
    """Undo this session's last saved label (the feature's previous label shows again)."""
    event = st.session_state.get(keys.LAST_LABEL_EVENT)
    if st.button("Undo last label", disabled=event is None, key=keys.LABEL_UNDO):
        try:
            data.undo_label(event)
        except data.LabelWriteError as err:
            st.error(f"Undo failed: {err}")
            return
        st.session_state[keys.LAST_LABEL_EVENT] = None
        st.rerun()
