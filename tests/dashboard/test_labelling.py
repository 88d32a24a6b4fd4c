"""Labelling on the Feature page: no choice made for the user, the header shows a save at once, undo is there."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import labels as labels_db
from app_pages import page, tiny_study


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch)


def feature_page(arm: str, feature: int) -> AppTest:
    return page("feature", arm=arm, feature=feature)


def header_label(at: AppTest) -> str:
    return {m.label: m.value for m in at.metric}["label"]


def stored(study: Path) -> list[list]:
    return labels_db.history(study / "labels.duckdb", "tiny")[["arm", "feature", "label", "note"]].values.tolist()


def test_an_unlabelled_feature_opens_with_no_choice_and_nothing_is_saved_without_one(study):
    at = feature_page("finetuned", 4)
    assert at.radio(key="label_choice_finetuned_4").value is None
    at.text_input(key="label_note_finetuned_4").set_value("blood words")
    at.button(key="label_save_finetuned_4").click().run()
    assert "Choose medical, not medical or unsure" in at.warning[0].value
    assert stored(study) == [] and header_label(at) == "—"
    assert at.text_input(key="label_note_finetuned_4").value == "blood words"  # the note is kept


def test_a_saved_label_shows_in_the_header_at_once_and_undo_on_the_page_takes_it_back(study):
    at = feature_page("finetuned", 4)
    at.radio(key="label_choice_finetuned_4").set_value("medical")
    at.button(key="label_save_finetuned_4").click().run()
    assert header_label(at) == "medical"  # the same run that saved it, no second click
    at.radio(key="label_choice_finetuned_4").set_value("unsure")
    at.text_input(key="label_note_finetuned_4").set_value("blood, or any liquid?")
    at.button(key="label_save_finetuned_4").click().run()
    assert header_label(at) == "unsure"
    assert stored(study) == [["finetuned", 4, "medical", ""], ["finetuned", 4, "unsure", "blood, or any liquid?"]]
    undo = at.button(key="label_undo")
    assert "finetuned #4 is unsure" in undo.label
    undo.click().run()
    assert header_label(at) == "medical"  # the previous label is current again, in the header and the form
    assert at.radio(key="label_choice_finetuned_4").value == "medical"
    assert at.text_input(key="label_note_finetuned_4").value == ""
    assert stored(study) == [["finetuned", 4, "medical", ""]]
    assert at.button(key="label_undo").disabled  # one undo per save
