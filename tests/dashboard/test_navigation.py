"""Links and places: a link to no feature says so in one line and shows no feature; the user's place survives a
visit to another page; Back (a rerun with the previous URL, as Streamlit's frontend sends it) returns to it."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_pages import features_matched as matched, page, tiny_study
from tiny_db import D_SAE


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch)


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


def widen(path: Path, n: int = 300, seed: int = 0) -> None:
    """Give each arm of the tiny database n more live features with random density and coherence."""
    import duckdb
    import numpy as np

    rng = np.random.default_rng(seed)
    with duckdb.connect(str(path)) as con:
        for arm in ("base", "finetuned"):
            ids = np.arange(D_SAE, D_SAE + n)
            density, coherence = rng.uniform(1e-4, 0.3, n), rng.uniform(-0.2, 0.9, n)
            con.executemany("INSERT INTO feature_words (arm, feature, coherence, n_valid, med_matches, is_candidate, "
                            "top_text, top_words) VALUES (?, ?, ?, 3, 0, false, 'a | b | c', ['a', 'b', 'c'])",
                            [[arm, int(f), float(c)] for f, c in zip(ids, coherence)])
            con.executemany("INSERT INTO feature_activations (arm, feature, n_fired, frac_nonzero, max_act, mean_act)"
                            " VALUES (?, ?, ?, ?, 1.0, 0.5)",
                            [[arm, int(f), int(d * 10_000) + 1, float(d)] for f, d in zip(ids, density)])
            con.execute("UPDATE arms SET d_sae = ? WHERE arm = ?", [D_SAE + n, arm])


def test_sorting_by_density_orders_every_matching_feature_not_one_page(study):
    import duckdb

    widen(study / "features.duckdb")
    with duckdb.connect(str(study / "features.duckdb"), read_only=True) as con:  # brute force: every feature
        by_density = con.execute("SELECT arm, feature, frac_nonzero FROM features ORDER BY frac_nonzero DESC, "
                                 "arm, feature").fetchall()
    at = page("features")
    first_page = at.dataframe[0].value
    assert len(first_page) == 50 and matched(at) == 2 * (D_SAE - 1 + 300)
    assert by_density[0][:2] not in set(zip(first_page["arm"], first_page["feature"]))  # not on the opening page
    at.selectbox(key="features_sort").set_value("density").run()
    table = at.dataframe[0].value
    assert (table["arm"].iloc[0], table["feature"].iloc[0]) == by_density[0][:2]
    assert table["frac_nonzero"].tolist() == [d for _, _, d in by_density[:50]]
    assert at.query_params["sort"] == "density" and at.query_params["order"] == "desc"
    at.number_input(key="features_page").set_value(2).run()  # page 2 continues the same order
    assert at.dataframe[0].value["frac_nonzero"].tolist() == [d for _, _, d in by_density[50:100]]


def test_the_grid_heads_its_columns_in_words_and_marks_the_sorted_one(study):
    at = page("features", sort="density", order="asc")
    labels = {name: config.get("label") for name, config in json.loads(at.dataframe[0].proto.columns).items()}
    assert labels["frac_nonzero"] == "density ↑" and labels["coherence"] == "coherence"
    assert labels["med_matches"] == "medical matches" and labels["max_act"] == "max activation"


def test_an_empty_table_names_the_filter_that_emptied_it_and_resets(study):
    at = page("features")
    at.text_input(key="features_word").set_value("xyz").run()
    assert matched_none(at) == "No feature matches. Without **top or fired tokens include 'xyz'**, 10 would."
    at.button(key="features_reset").click().run()
    assert matched(at) == 10 and at.text_input(key="features_word").value == ""
    at.number_input(key="features_min_matches").set_value(3).run()  # feature 1 of each arm
    at.text_input(key="features_word").set_value("blood").run()  # feature 4 of each arm
    assert matched_none(at) == ("No feature matches. Without **medical matches ≥ 3**, 2 would; "
                                "Without **top or fired tokens include 'blood'**, 2 would.")


def matched_none(at: AppTest) -> str:
    assert not any("features match" in m.value for m in at.markdown)
    return at.warning[0].value


def test_the_default_order_opens_on_medical_matches_without_dead_features(study):
    at = page("features")
    table = at.dataframe[0].value
    # live features by medical matches (1: 3; 0, 4: 2; 2, 5: 0), ties to the more coherent (0: 0.5 > 4: 0.3;
    # 5: 0.6 > 2: 0.2), then base before finetuned; feature 3 (dead) is not there
    assert table["feature"].tolist() == [1, 1, 0, 0, 4, 4, 5, 5, 2, 2]
    assert table["arm"].tolist()[:2] == ["base", "finetuned"]
    assert at.query_params == {"sort": "medical matches", "order": "desc"}


def test_candidates_only_keeps_the_candidates_by_the_study_rule_and_its_place_in_the_url(study):
    """tiny_db: features 0, 1 and 4 of each arm are candidates; with dead shown the table has all 12, with
    `candidates=only` the 6 candidates, each saying which rule made it one."""
    at = page("features", dead="shown", candidates="only")
    assert not at.exception and matched(at) == 6
    table = next(d.value for d in at.dataframe if "candidate_by" in d.value.columns)
    assert sorted(set(table["feature"])) == [0, 1, 4] and set(table["candidate_by"]) == {"decoder"}
    assert at.query_params["candidates"] == "only"
    at.toggle(key="features_candidates").set_value(False).run()
    assert matched(at) == 2 * D_SAE and "candidates" not in at.query_params


def test_a_study_whose_candidates_may_be_fired_opens_on_the_medical_words_they_fire_on(study):
    """`candidates = "either"`: the default order is by medical words among the fired tokens, not by the top
    tokens' matches. tiny_db's features fire on none, so every live feature ties and the more coherent comes first:
    1 (0.7), 5 (0.6), 0 (0.5), 4 (0.3), 2 (0.2), where by top-token matches 0 and 4 (2 matches) come before 5."""
    config = study / "study.toml"
    config.write_text(config.read_text() + 'candidates = "either"\n')
    at = page("features")
    assert not at.exception
    assert at.query_params == {"sort": "medical words fired on", "order": "desc"}
    assert at.dataframe[0].value["feature"].tolist() == [1, 1, 5, 5, 0, 0, 4, 4, 2, 2]


def test_the_word_filter_also_finds_a_word_a_feature_fires_on(study):
    """base 2's top tokens are " the | a | of"; it also fires on " Heart" (case and space ignored), so "heart"
    finds it beside 0, 1 and 4, whose top tokens hold it (issue 25: the filter read only the decoder's tokens)."""
    import duckdb

    with duckdb.connect(str(study / "features.duckdb")) as con:
        con.execute("INSERT INTO fired_tokens VALUES ('base', 2, 2, 42, ' Heart', 7, 3.5)")
    at = page("features", word="heart", arms="base")
    assert not at.exception and matched(at) == 4
    assert sorted(at.dataframe[0].value["feature"]) == [0, 1, 2, 4]
    assert "fires on" in at.text_input(key="features_word").label + (at.text_input(key="features_word").help or "")


@pytest.mark.parametrize("name, params, message", [
    ("features", {"density_min": "abc"}, "density_min='abc' in the link: expected a number 0–1"),
    ("features", {"coherence": "abc..1"}, "coherence='abc..1' in the link: expected a range like 0.2..1 within -1..1"),
    ("inspect", {"row": "abc"}, "row='abc' in the link: expected a whole number: the corpus has rows 0 to "),
    ("inspect", {"token": "abc"}, "token='abc' in the link: expected a token position, a whole number from 0"),
])
def test_a_number_in_a_link_that_is_no_number_is_one_line_naming_what_it_expects(study, name, params, message):
    """Issue 25: these read "could not convert string to float: 'abc'" (Python's own words)."""
    at = page(name, **params)
    assert not at.exception and len(at.error) == 1 and at.error[0].value.startswith(message)
    assert "convert" not in at.error[0].value and "literal" not in at.error[0].value
