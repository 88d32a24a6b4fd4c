"""Links and places: a link to no feature says so in one line and shows no feature; the user's place survives a
visit to another page; Back (a rerun with the previous URL, as Streamlit's frontend sends it) returns to it."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from factories import study_toml
from tiny_db import D_SAE, write_tiny_db

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


@pytest.fixture
def study(tmp_path, monkeypatch):
    arms = [{"name": name, "model": f"m/{name}", "sae_path": f"s/{name}"} for name in ("base", "finetuned")]
    config = tmp_path / "study.toml"
    config.write_text(study_toml(arms, features_db=str(tmp_path / "features.duckdb"),
                                 labels_db=str(tmp_path / "labels.duckdb")))
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(config))
    write_tiny_db(tmp_path / "features.duckdb")
    return tmp_path


def page(name: str, **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params.update(params)
    return at.switch_page(f"views/{name}.py").run()


def matched(at: AppTest) -> int:
    text = next(m.value for m in at.markdown if "features match" in m.value)
    return int(text.split("**")[1].replace(",", ""))


def shows_no_feature(at: AppTest) -> bool:
    return not at.title and not at.metric and not at.get("plotly_chart") and not at.number_input


@pytest.mark.parametrize("name, params, message", [
    ("feature", {"arm": "base", "feature": "999999"}, f"base has no feature 999999 (0–{D_SAE - 1})"),
    ("feature", {"arm": "nope", "feature": "abc"}, "no arm 'nope' (arms: base, finetuned)"),
    ("feature", {"feature": "-5"}, f"base has no feature -5 (0–{D_SAE - 1})"),
    ("feature", {"arm": "finetuned", "feature": "abc"}, f"'abc' is not a feature id: finetuned has features "
                                                        f"0–{D_SAE - 1}"),
    ("compare", {"left_feature": "x"}, f"'x' is not a feature id: base has features 0–{D_SAE - 1}"),
    ("compare", {"left_arm": "base", "left_feature": "1", "right_arm": "finetuned", "right_feature": "6"},
     f"finetuned has no feature 6 (0–{D_SAE - 1})"),
])
def test_a_link_to_no_feature_is_one_error_line_and_no_feature(study, name, params, message):
    at = page(name, **params)
    assert not at.exception
    assert [e.value for e in at.error] == [message]
    assert shows_no_feature(at) and not at.subheader


def test_a_bad_arm_in_a_label_link_is_one_line(study):
    at = page("label", arm="nope")
    assert not at.exception and [e.value for e in at.error] == ["no arm 'nope' (arms: base, finetuned)"]
    assert not at.subheader  # no candidate of some other arm in its place


@pytest.mark.parametrize("params, message", [
    ({"arm": "base", "feature": "4, 99"}, f"base has no feature 99 (0–{D_SAE - 1})"),
    ({"arm": "nope", "feature": "4"}, "no arm 'nope' (arms: base, finetuned)"),
])
def test_a_bad_steer_link_is_one_line_before_any_model_loads(study, params, message):
    at = page("steer", **params)  # the tiny study's models do not exist: loading one would be an exception
    assert not at.exception and [e.value for e in at.error] == [message]
    assert not at.slider and not at.button


def test_back_returns_to_the_previous_feature(study):
    at = page("feature", arm="base", feature="1")
    at.number_input(key="feature_id").set_value(4).run()
    assert at.title[0].value == "base · feature 4"
    assert at.query_params == {"arm": "base", "feature": "4"}  # each feature its own URL: a history entry
    at.query_params = {"arm": "base", "feature": "1"}  # Back: the frontend reruns with the previous URL
    at.run()
    assert at.title[0].value == "base · feature 1"
    assert at.number_input(key="feature_id").value == 1
    assert at.query_params == {"arm": "base", "feature": "1"}  # not overwritten with feature 4


def test_a_link_opens_its_feature_on_a_page_already_open(study):
    at = page("feature", arm="base", feature="1")
    at.query_params = {"arm": "finetuned", "feature": "4"}  # e.g. "Open its page" on the Label page
    at.run()
    assert at.title[0].value == "finetuned · feature 4"


def sidebar_to(at: AppTest, name: str) -> AppTest:
    """A click in the sidebar: the page without query parameters."""
    at.query_params = {}
    return at.switch_page(f"views/{name}.py").run()


def test_features_filters_survive_a_visit_to_another_page(study):
    at = page("features")
    at.number_input(key="features_min_matches").set_value(2).run()
    at.text_input(key="features_word").set_value("heart").run()
    at.multiselect(key="features_arms").set_value(["base"]).run()
    assert matched(at) == 3
    sidebar_to(at, "feature")
    assert at.title[0].value == "base · feature 0"
    sidebar_to(at, "features")
    assert not at.exception
    assert matched(at) == 3
    assert at.text_input(key="features_word").value == "heart"
    assert at.number_input(key="features_min_matches").value == 2
    assert at.query_params["word"] == "heart" and at.query_params["arms"] == "base"


def test_a_features_link_carries_its_filters(study):
    at = page("features", word="heart", min_matches="2", arms="finetuned")
    assert not at.exception
    assert matched(at) == 3  # finetuned 0, 1, 4
    assert at.text_input(key="features_word").value == "heart"


def test_the_label_queue_keeps_its_arm(study):
    at = page("label")
    at.selectbox(key="label_queue_arm").set_value("finetuned").run()
    assert at.subheader[0].value == "finetuned · feature 1"
    assert at.query_params == {"arm": "finetuned"}
    sidebar_to(at, "features")
    sidebar_to(at, "label")
    assert at.selectbox(key="label_queue_arm").value == "finetuned"
    assert at.subheader[0].value == "finetuned · feature 1"


def test_a_feature_page_keeps_its_feature_after_a_visit_elsewhere(study):
    at = page("feature", arm="finetuned", feature="3")
    sidebar_to(at, "label")
    sidebar_to(at, "feature")
    assert at.title[0].value == "finetuned · feature 3"
    assert at.query_params == {"arm": "finetuned", "feature": "3"}
