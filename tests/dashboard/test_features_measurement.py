"""A measurement added by declaration alone (the domains stage's medical / general ratio, issue 25): the Features
table shows it, filters and sorts by it from the URL and the widgets, the empty-table line names it, and the
Feature page's header shows it. tiny_db's ratios: feature 0 4.0, 1 8.0, 2 0.5, 3 none (dead), 4 2.0, 5 1.0."""

import pytest

from app_pages import features_matched as matched, page, tiny_study


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch)


def test_the_ratio_is_a_column_a_filter_and_a_sort(study):
    at = page("features", medical_ratio_min="3", sort="medical / general", order="desc")
    assert not at.exception
    assert matched(at) == 4  # features 0 and 1 of both arms
    table = at.dataframe[0].value
    assert table["feature"].tolist() == [1, 1, 0, 0] and table["medical_ratio"].tolist() == [8.0, 8.0, 4.0, 4.0]
    at.number_input(key="features_medical_ratio_max").set_value(5.0).run()
    assert matched(at) == 2 and at.query_params["medical_ratio_max"] == "5"
    at.number_input(key="features_medical_ratio_min").set_value(None).run()
    assert matched(at) == 8  # every live feature has a ratio of at most 5 but feature 1


def test_a_ratio_bound_that_empties_the_table_is_named(study):
    at = page("features", medical_ratio_min="100")
    assert any("Without **medical / general ≥ 100**, 10 would" in w.value for w in at.warning)


def test_the_feature_header_shows_the_ratio(study):
    metrics = {m.label: m.value for m in page("feature", arm="base", feature=1).metric}
    assert metrics["medical / general"] == "8.00"
    assert {m.label: m.value for m in page("feature", arm="base", feature=3).metric}["medical / general"] == "—"
