"""The Features table's fate: each feature's fate in its arm's first declared pair as a column, and a filter on it
kept in the URL, so "medical candidates that emerged" is one link. The expected rows are the database's own, read
with SQL from the features view; tiny_db (pair=True) with finetuned 0 and 1 (candidates) made `emerge` and base 4
(a candidate) `disappear`."""

import duckdb
import pytest

from app_pages import features_matched as matched, page, tiny_study


@pytest.fixture
def study(tmp_path, monkeypatch):
    folder = tiny_study(tmp_path, monkeypatch, pair=True)
    with duckdb.connect(str(folder / "features.duckdb")) as con:
        con.execute("UPDATE feature_matches SET status = 'emerge' WHERE arm = 'finetuned' AND feature IN (0, 1)")
        con.execute("UPDATE feature_matches SET status = 'disappear' WHERE arm = 'base' AND feature = 4")
    return folder


def expected(study, fates: list[str]) -> set[tuple[str, int]]:
    """Live medical candidates with one of these fates, by SQL on the features view."""
    with duckdb.connect(str(study / "features.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT arm, feature FROM features WHERE list_contains(?, diff_status) AND is_candidate "
                           "AND n_fired > 0", [fates]).fetchall()
    return {(arm, int(feature)) for arm, feature in rows}


def shown(at) -> set[tuple[str, int]]:
    table = next(d.value for d in at.dataframe if "fate" in d.value.columns)
    return {(arm, int(feature)) for arm, feature in zip(table["arm"], table["feature"])}


def test_candidates_that_emerged_are_exactly_the_databases_and_one_link(study):
    at = page("features", fate="emerge", candidates="only")
    assert not at.exception
    assert shown(at) == expected(study, ["emerge"]) == {("finetuned", 0), ("finetuned", 1)}
    assert matched(at) == 2
    table = next(d.value for d in at.dataframe if "fate" in d.value.columns)
    assert set(table["fate"]) == {"emerge"}
    assert at.multiselect(key="features_fates").value == ["emerge"]
    assert at.query_params["fate"] == "emerge" and at.query_params["candidates"] == "only"


def test_the_fate_filter_takes_several_fates_and_goes_into_the_url(study):
    at = page("features", candidates="only")
    assert matched(at) == 6  # 0, 1 and 4 of each arm, every fate
    at.multiselect(key="features_fates").set_value(["disappear", "emerge"]).run()
    assert shown(at) == expected(study, ["emerge", "disappear"]) == {("finetuned", 0), ("finetuned", 1), ("base", 4)}
    assert at.query_params["fate"] == "emerge,disappear"  # in the widget's order
    at.multiselect(key="features_fates").set_value([]).run()
    assert matched(at) == 6 and "fate" not in at.query_params


def test_the_fate_column_names_its_pair_and_shows_every_features_fate(study):
    at = page("features", dead="shown")
    table = next(d.value for d in at.dataframe if "fate" in d.value.columns)
    with duckdb.connect(str(study / "features.duckdb"), read_only=True) as con:
        fates = dict(((a, f), s) for a, f, s in con.execute("SELECT arm, feature, diff_status FROM features").fetchall())
    assert len(table) == 12
    assert {(a, f): s for a, f, s in zip(table["arm"], table["feature"], table["fate"])} == fates
    assert "first declared pair (base: base → finetuned; finetuned: base → finetuned)" in \
        at.multiselect(key="features_fates").help


def test_a_fate_filter_that_empties_the_table_is_named(study):
    at = page("features", fate="rare", candidates="only")  # base 3 is rare, and no candidate
    assert "Without **fate rare**, 6 would" in at.warning[0].value


def test_a_link_with_no_such_fate_is_one_line(study):
    at = page("features", fate="gone")
    assert [e.value for e in at.error] == ["fate='gone' in the link: expected fates among persist, emerge, "
                                           "disappear, dead, rare"]
    assert not at.dataframe
