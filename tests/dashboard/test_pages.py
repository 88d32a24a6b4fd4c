"""Every page driven by AppTest on a hand-written database: counts a human can check, labels that survive."""

import pytest
from streamlit.testing.v1 import AppTest

from core import labels as labels_db
from app_pages import features_matched as matched, page, tiny_study
from tiny_db import FINGERPRINT, write_tiny_db


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch)


def test_features_filters_change_the_count_by_hand(study):
    at = page("features")
    assert not at.exception
    assert matched(at) == 10  # 2 arms x 6 features, less feature 3 of each: dead (density 0), hidden by default
    assert "(2 dead features hidden)" in next(m.value for m in at.markdown if "features match" in m.value)
    at.number_input(key="features_min_matches").set_value(2).run()
    assert matched(at) == 6  # features 0, 1, 4 in both arms
    at.text_input(key="features_word").set_value("Heart").run()
    assert matched(at) == 6  # 0, 1, 4 all have " heart" in their top tokens
    at.multiselect(key="features_arms").set_value(["base"]).run()
    assert matched(at) == 3
    at.text_input(key="features_word").set_value("lung").run()
    assert matched(at) == 1
    table = at.dataframe[0].value
    assert table["feature"].tolist() == [1] and table["top_tokens"].iloc[0] == " heart |  lung |  liver"


def test_features_coherence_density_and_label_filters(study):
    at = page("features")
    at.slider(key="features_coherence").set_value((0.45, 1.0)).run()
    assert matched(at) == 6  # coherence 0.5, 0.7, 0.6 per arm; the NULL of feature 3 is out
    at.slider(key="features_coherence").set_value((-1.0, 1.0)).run()
    at.number_input(key="features_density_min").set_value(0.005).run()
    assert matched(at) == 6  # densities 0.01, 0.3, 0.05 per arm
    labels_db.save_label(study / "labels.duckdb", "tiny", "base", 2, FINGERPRINT["base"], "not_medical")
    at.selectbox(key="features_label_status").set_value("labelled").run()
    assert matched(at) == 1
    at.selectbox(key="features_label_status").set_value("unlabelled").run()
    assert matched(at) == 5


def test_a_feature_opens_from_its_url(study):
    at = page("feature", arm="finetuned", feature="4")
    assert not at.exception
    assert at.title[0].value == "finetuned · feature 4"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["medical matches"] == "2" and metrics["coherence"] == "0.300" and metrics["density"] == "5%"
    figure = at.get("plotly_chart")[0].proto.spec
    assert "' blood'" in figure and "' heart'" in figure
    assert any("&nbsp;blood</span>" in m.value and "underline" in m.value for m in at.markdown)  # the top context


def test_compare_is_prefilled_from_the_feature_page_and_counts_shared_tokens(study):
    at = page("compare", left_arm="base", left_feature="0", right_arm="finetuned", right_feature="4")
    assert not at.exception
    assert [s.value for s in at.subheader] == ["base · feature 0", "finetuned · feature 4"]
    assert any("Shared top tokens: 1" in m.value and "' heart'" in m.value for m in at.markdown)


def test_a_label_saved_on_the_label_page_survives_a_rebuild_of_the_features_database(study):
    at = page("label", annotator="ann")
    assert not at.exception
    assert at.subheader[0].value == "base · feature 1"  # most matches first
    at.radio(key="label_choice_base_1").set_value("medical")
    at.text_input(key="label_note_base_1").set_value("lung and liver")
    at.button(key="label_save_base_1").click().run()
    saved = labels_db.current_labels(study / "labels.duckdb", "tiny")
    assert saved[["arm", "feature", "label", "note"]].values.tolist() == [["base", 1, "medical", "lung and liver"]]
    assert at.subheader[0].value == "base · feature 0"  # the queue moved on
    (study / "features.duckdb").unlink()
    write_tiny_db(study / "features.duckdb")  # a re-run of the precompute
    again = page("label")
    assert any(m.value == "1 / 3 candidates" for m in again.metric)
    assert again.subheader[0].value == "base · feature 0"


def test_undo_brings_the_feature_back_to_the_queue(study):
    at = page("label", annotator="ann")
    at.radio(key="label_choice_base_1").set_value("medical")
    at.button(key="label_save_base_1").click().run()
    assert at.subheader[0].value == "base · feature 0"
    at.button(key="label_undo").click().run()
    assert at.subheader[0].value == "base · feature 1"
    assert labels_db.current_labels(study / "labels.duckdb", "tiny").empty


def test_labels_of_another_sae_are_not_attached(study):
    labels_db.save_label(study / "labels.duckdb", "tiny", "base", 1, "an-older-sae", "medical")
    at = page("label")
    assert at.subheader[0].value == "base · feature 1"  # still unlabelled for the current SAE
    assert "1 labels belong to an SAE" in at.warning[0].value


@pytest.mark.parametrize("name", ["features", "feature", "compare", "label"])
def test_every_page_guards_a_missing_database(study, name):
    (study / "features.duckdb").unlink()
    at = page(name)
    assert not at.exception
    assert "No features database yet" in at.info[0].value


def test_a_label_that_cannot_be_written_says_so_and_keeps_the_input(study, monkeypatch):
    def refuse(*args, **kwargs):
        raise labels_db.LabelWriteError("disk full")

    monkeypatch.setattr(labels_db, "save_label", refuse)
    at = page("label", annotator="ann")
    at.radio(key="label_choice_base_1").set_value("unsure")
    at.text_input(key="label_note_base_1").set_value("looks like lungs")
    at.button(key="label_save_base_1").click().run()
    assert "The label was not saved: disk full" in at.error[0].value
    assert at.text_input(key="label_note_base_1").value == "looks like lungs"
    assert at.radio(key="label_choice_base_1").value == "unsure"
    assert at.subheader[0].value == "base · feature 1"  # still this feature


def test_a_database_published_while_the_page_is_open_is_picked_up(study, tmp_path):
    at = page("features")
    assert matched(at) == 10  # feature 3 of each arm is dead: hidden
    write_tiny_db(tmp_path / "staging" / "features.duckdb", arms=("base",))
    (tmp_path / "staging" / "features.duckdb").replace(study / "features.duckdb")  # the precompute's rename
    at.run()
    assert matched(at) == 5  # the new file has the base arm only
