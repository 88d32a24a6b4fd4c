"""Labelling on the Feature page: no choice made for the user, the header shows a save at once, undo is there, and
no label is saved without an annotator's name."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import labels as labels_db
from app_pages import page, tiny_study


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch)


def feature_page(arm: str, feature: int, annotator: str | None = "ann") -> AppTest:
    return page("feature", arm=arm, feature=feature, **({"annotator": annotator} if annotator else {}))


def header_label(at: AppTest) -> str:
    return {m.label: m.value for m in at.metric}["label"]


def stored(study: Path) -> list[list]:
    return labels_db.history(study / "labels.duckdb", "tiny")[["arm", "feature", "label", "note"]].values.tolist()


def stored_by(study: Path) -> list[list]:
    return labels_db.history(study / "labels.duckdb", "tiny")[["author", "feature", "label"]].values.tolist()


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


def test_the_queue_opens_on_the_candidate_with_most_medical_words_by_its_rule(study):
    """tiny_db's base candidates by the decoder: 1 (3 matches), 0 and 4 (2). Make feature 5 (no top-token match) a
    candidate by firing with 4 medical fired words: it leads the queue; with 3 it ties feature 1's 3 matches and
    the more coherent (1: 0.7 > 5: 0.6) leads."""
    import os
    import shutil

    import duckdb

    def make_fired(n_words: int) -> None:  # edited in a copy, then published over it as the precompute does
        words = ["heart", "lung", "liver", "kidney"][:n_words]
        edited = study / "edited.duckdb"
        shutil.copyfile(study / "features.duckdb", edited)
        with duckdb.connect(str(edited)) as con:
            con.execute("UPDATE feature_words SET candidate_by = 'fired', is_candidate = TRUE, fired_med_matches = ?, "
                        "fired_matched_words = ? WHERE arm = 'base' AND feature = 5", [n_words, words])
        os.replace(edited, study / "features.duckdb")

    assert page("label").subheader[0].value == "base · feature 1"
    make_fired(4)
    at = page("label")
    assert at.subheader[0].value == "base · feature 5"
    assert any("medical words among the tokens it fires on most: heart, lung, liver, kidney" in c.value
               and "medical candidate by the tokens it fires on" in c.value for c in at.caption)
    make_fired(3)
    assert page("label").subheader[0].value == "base · feature 1"


def test_without_an_annotator_name_a_label_is_one_line_and_nothing_is_saved(study):
    at = feature_page("finetuned", 4, annotator=None)
    assert at.text_input(key="annotator").value == ""
    at.radio(key="label_choice_finetuned_4").set_value("medical")
    at.text_input(key="label_note_finetuned_4").set_value("blood words")
    at.button(key="label_save_finetuned_4").click().run()
    assert len(at.warning) == 1 and "Not saved: Type your name under **Annotator**" in at.warning[0].value
    assert stored(study) == [] and header_label(at) == "—"
    assert at.radio(key="label_choice_finetuned_4").value == "medical"  # the input is kept
    assert at.text_input(key="label_note_finetuned_4").value == "blood words"
    at.text_input(key="annotator").set_value("   ").run()  # blanks are no name either
    at.button(key="label_save_finetuned_4").click().run()
    assert stored(study) == [] and "Not saved" in at.warning[0].value
    at.text_input(key="annotator").set_value(" Ann ").run()  # named: the same click saves, under the stripped name
    at.button(key="label_save_finetuned_4").click().run()
    assert stored_by(study) == [["Ann", 4, "medical"]] and header_label(at) == "medical"


def test_the_annotator_is_typed_once_and_kept_in_the_url(study):
    at = page("label")
    assert "annotator" not in at.query_params
    at.text_input(key="annotator").set_value("bob").run()
    assert at.query_params["annotator"] == "bob"  # the Label page writes its own place (arm) and keeps this
    assert at.query_params["arm"] == "base"
    at.selectbox(key="label_queue_arm").set_value("finetuned").run()
    assert (at.query_params["arm"], at.query_params["annotator"]) == ("finetuned", "bob")
    at.switch_page("views/feature.py").run()  # another page: still bob, in the box and the URL
    assert at.text_input(key="annotator").value == "bob" and at.query_params["annotator"] == "bob"
    at.text_input(key="annotator").set_value("").run()
    assert "annotator" not in at.query_params
    shared = page("label", annotator="cy")  # a link that names its annotator opens as them
    assert shared.text_input(key="annotator").value == "cy"
    assert any("Labelling as **cy**" in c.value for c in shared.caption)
