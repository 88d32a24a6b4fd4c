"""The team's labels for the pages: who is labelling in this session (the sidebar's name, kept in the URL), every
annotator's current labels, the adjudications, the agreement between annotators and the counts by the consensus
rule. Never cached: another browser may have just saved a label. Reads of the features database: dashboard.reads;
the team's one label per feature (the consensus): dashboard.data.current_labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import agreement, labels
from dashboard import reads
from dashboard import state_keys as keys
from dashboard.study import study_config

ANNOTATOR_PARAM = "annotator"  # the URL's name for it (dashboard.place keeps it on every page)


def annotator() -> str:
    """This session's annotator, stripped; "" until one is named in the sidebar."""
    return str(st.session_state.get(keys.ANNOTATOR) or "").strip()


def _file() -> tuple[Path, str]:
    config = study_config()
    return Path(config.labels_db), config.name


def annotator_labels() -> pd.DataFrame:
    """Every annotator's current label of the arms' current SAEs' features (core.labels.annotator_labels)."""
    return labels.split_by_sae(labels.annotator_labels(*_file()), reads.study.fingerprints())[0]


def adjudications() -> pd.DataFrame:
    """The latest adjudication of each adjudicated feature of the arms' current SAEs."""
    return labels.split_by_sae(labels.adjudications(*_file()), reads.study.fingerprints())[0]


def own_labels(name: str) -> pd.DataFrame:
    """The features `name` has labelled (arm, feature, label, ...): the second pass's queue leaves them out."""
    frame = annotator_labels()
    return frame[frame["author"] == name].reset_index(drop=True)


def own_label(arm: str, feature: int, adjudicate: bool = False) -> dict[str, Any] | None:
    """This session's annotator's current label of a feature (or, adjudicating, the feature's adjudication)."""
    frame = adjudications() if adjudicate else own_labels(annotator())
    match = frame[(frame["arm"] == arm) & (frame["feature"] == feature)]
    return None if match.empty else match.iloc[0].to_dict()


def save_label(arm: str, feature: int, label: str, note: str, adjudicate: bool = False) -> int:
    """Save a label by this session's annotator; StudyInputError (one line, nothing saved) while none is named,
    LabelWriteError when the file cannot be written."""
    name = labels.check_annotator(annotator())
    path, study = _file()
    return labels.save_label(path, study, arm, feature, reads.study.fingerprints()[arm], label, note, author=name,
                             adjudicated=adjudicate)


def disagreements() -> pd.DataFrame:
    """Features annotators labelled differently (core.agreement.disagreements), adjudicated or not."""
    return agreement.disagreements(annotator_labels(), adjudications())


def pair_agreement() -> pd.DataFrame:
    """Cohen's kappa per pair of annotators, over all labels and per label one-vs-rest."""
    return agreement.pair_agreement(annotator_labels(), labels.LABELS)


def label_counts(team: pd.DataFrame) -> pd.DataFrame:
    """Per arm: features per consensus label and per rule, from the team's labels (dashboard.data.current_labels),
    and how many annotators labelled there."""
    counts = agreement.label_counts(team, labels.LABELS)
    people = annotator_labels().groupby("arm")["author"].nunique().rename("annotators")
    out = counts.merge(people, left_on="arm", right_index=True, how="left")
    return out.assign(annotators=out["annotators"].fillna(0).astype(int))  # 0: adjudicated only
