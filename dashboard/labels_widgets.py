"""Widgets of team labelling (issue 26): the annotator's name in the sidebar, the label form that saves under it
(or adjudicates), undo, the agreement between annotators and the label counts by the consensus rule."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from core import agreement
from core.errors import StudyInputError
from core.labels import LABELS
from dashboard import data, labels_data, place
from dashboard import state_keys as keys
from dashboard.labels_data import ANNOTATOR_PARAM, annotator
from dashboard.widgets import LABEL_NAMES

_URL_SEEN = "_annotator_url_seen"  # the annotator this session last put in the URL
NO_NAME = ("Type your name under **Annotator** in the sidebar to save labels: each label carries who made it, "
           "and the Label page compares annotators.")


def annotator_sidebar() -> None:
    """The annotator's name, in the sidebar of every page: typed once, kept in session state and in the URL
    (`?annotator=ann`), so a bookmark or a shared link opens as that annotator. A URL that names another annotator
    than the one this session wrote came from outside (a link, Back) and decides, as on dashboard.place."""
    url = st.query_params.get(ANNOTATOR_PARAM)
    if url is not None and url != st.session_state.get(_URL_SEEN):
        st.session_state[keys.ANNOTATOR] = url
    st.sidebar.text_input("Annotator", key=keys.ANNOTATOR, placeholder="your name or initials",
                          help="Labels you save carry this name; it stays in the page's URL.")
    name = annotator()
    if name and st.query_params.get(ANNOTATOR_PARAM) != name:
        st.query_params[ANNOTATOR_PARAM] = name
    elif not name and ANNOTATOR_PARAM in st.query_params:
        del st.query_params[ANNOTATOR_PARAM]
    st.session_state[_URL_SEEN] = name or None


def _suffix(arm: str, feature: int, adjudicate: bool) -> str:
    """The label form's widget keys end with this (two forms on one page do not collide)."""
    return f"_{arm}_{feature}" + ("_adjudicate" if adjudicate else "")


def save_pending(arm: str, feature: int, adjudicate: bool = False) -> bool:
    """Whether this run carries a click on that feature's Save, which its form (drawn later in the run) will
    store: a queue must draw that form again even if another annotator's label moved the queue on meanwhile."""
    return bool(st.session_state.get(keys.LABEL_SAVE + _suffix(arm, feature, adjudicate)))


def label_form(arm: str, feature: int, adjudicate: bool = False) -> bool:
    """Medical / not medical / unsure and a note, saved as this session's annotator (adjudicate: as the feature's
    adjudication); returns True when a label was saved (the caller reruns, so the header shows it at once). A form:
    the choice and the note are sent together when Save is clicked, so what is stored is what the form shows
    however fast one types and clicks; Enter in the note does not submit (a second click would store it twice). It
    opens on this annotator's own label: another annotator's is not suggested (labels stay independent)."""
    current = labels_data.own_label(arm, feature, adjudicate)
    suffix = _suffix(arm, feature, adjudicate)
    options = list(LABEL_NAMES)
    with st.form(keys.LABEL_FORM + suffix, border=False, enter_to_submit=False):
        choice = st.radio("Adjudicated label" if adjudicate else "Label", options, format_func=LABEL_NAMES.get,
                          horizontal=True, key=keys.LABEL_CHOICE + suffix,
                          index=options.index(current["label"]) if current else None)
        note = st.text_input("Note", value=current["note"] if current and current["note"] else "",
                             key=keys.LABEL_NOTE + suffix)
        submitted = st.form_submit_button("Save adjudication" if adjudicate else "Save label", type="primary",
                                          key=keys.LABEL_SAVE + suffix)
    if not submitted:
        return False
    if choice is None:
        st.warning("Choose medical, not medical or unsure, then save.")
        return False
    try:
        event = labels_data.save_label(arm, feature, choice, note, adjudicate)
    except StudyInputError:
        st.warning("Not saved: " + NO_NAME + " Your choice and note are kept.")
        return False
    except data.LabelWriteError as err:
        st.error(f"The label was not saved: {err}. Your choice and note are kept; try again.")
        return False
    st.session_state[keys.LAST_LABEL_EVENT] = {"id": event, "arm": arm, "feature": feature, "label": choice,
                                               "suffix": suffix}
    st.toast(f"Saved as {annotator()}: {arm} #{feature} is {LABEL_NAMES[choice]}")
    return True


def undo_button() -> None:
    """Undo this session's last saved label (the annotator's previous label of it shows again, in the header and
    in its form)."""
    event = st.session_state.get(keys.LAST_LABEL_EVENT)
    text = "Undo last label" if event is None else (
        f"Undo last label ({event['arm']} #{event['feature']} is {LABEL_NAMES[event['label']]})")
    if st.button(text, disabled=event is None, key=keys.LABEL_UNDO):
        try:
            data.undo_label(event["id"])
        except data.LabelWriteError as err:
            st.error(f"Undo failed: {err}")
            return
        st.session_state[keys.LAST_LABEL_EVENT] = None
        suffix = event.get("suffix", f"_{event['arm']}_{event['feature']}")
        for key in (keys.LABEL_CHOICE + suffix, keys.LABEL_NOTE + suffix):  # the form re-reads the label now current
            st.session_state.pop(key, None)
        st.rerun()


def _kappa_text(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}"


def agreement_section() -> None:
    """Cohen's kappa per pair of annotators (all labels, and each label one-vs-rest) and the features they disagree
    on, with links to each."""
    pairs, split = labels_data.pair_agreement(), labels_data.disagreements()
    st.subheader("Agreement between annotators")
    if pairs.empty:
        st.caption("Agreement needs two annotators who labelled the same features: pass the queue a second time "
                   "under another name (queue: second pass).")
        return
    wide = pairs.pivot_table(index=["annotator_a", "annotator_b", "features"], columns="label", values="kappa",
                             sort=False)
    overall = pairs[pairs["label"] == agreement.ALL_LABELS].set_index(["annotator_a", "annotator_b"])["agreement"]
    table = pd.DataFrame({"annotators": [f"{a} · {b}" for a, b, _ in wide.index],
                          "features both labelled": [n for _, _, n in wide.index],
                          "agree": [overall[(a, b)] for a, b, _ in wide.index]})
    for label in wide.columns:
        name = "κ" if label == agreement.ALL_LABELS else f"κ {LABEL_NAMES[label]}"
        table[name] = [_kappa_text(v) for v in wide[label]]
    st.dataframe(table, hide_index=True, width="stretch", key="agreement_kappa",
                 column_config={"agree": st.column_config.NumberColumn(format="percent")})
    st.caption("Cohen's κ over the features both annotators labelled (each annotator's latest label): 1 is "
               "perfect agreement, 0 what chance would give with each annotator's own label frequencies. Per label: "
               "that label against the other two. — where κ is undefined (both gave one label to every feature).")
    waiting = int(split["adjudicated"].isna().sum()) if len(split) else 0
    st.markdown(f"**{len(split)} features with different labels**, {waiting} waiting for adjudication "
                "(queue: adjudication)")
    if len(split):
        shown = split.assign(page=[place.feature_url(a, f) for a, f in zip(split["arm"], split["feature"])])
        st.dataframe(shown[["arm", "feature", "votes", "adjudicated", "page"]], hide_index=True, width="stretch",
                     key="agreement_disagreements",
                     column_config={"page": st.column_config.LinkColumn("open", display_text="feature page")})


def label_counts_section() -> None:
    """The Overview's count of human labels per arm, by the consensus rule, which it states."""
    counts = labels_data.label_counts(data.current_labels())
    st.markdown("**Human labels** (the Label page), one per feature by the team's rule, which Table 2's "
                "\"labelled medical\" also follows: " + agreement.CONSENSUS_RULE + ".")
    if counts.empty:
        st.caption("No feature is labelled yet.")
        return
    names = {label: LABEL_NAMES[label] for label in LABELS}
    rules = {rule: f"by {rule}" if rule in ("majority", "one annotator") else rule for rule in agreement.RULES}
    st.dataframe(counts.rename(columns=names | rules), hide_index=True, width="stretch", key="label_counts")
