"""The Feature page's "fires most on" table, from the hand-written database (numbers in tests/tiny_db.py)."""

import pytest

from app_pages import page, tiny_study


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch)


def test_fires_most_on_shows_counts_and_shares_by_hand(study):
    """finetuned 4 fired 500 times: 375 on " blood" (which occurs 750 times), 125 on the byte token <0x8F>."""
    at = page("feature", arm="finetuned", feature=4)
    assert not at.exception
    assert any("Fires most on" in m.value for m in at.markdown)
    table = next(d.value for d in at.dataframe if "of its firings" in d.value.columns or "count" in d.value.columns)
    assert table["token"].tolist() == ["' blood'", "'<0x8F>'"]
    assert table["count"].tolist() == [375, 125]
    assert table["share_of_firings"].tolist() == [0.75, 0.25]
    assert table["fires_on_share"].tolist() == [0.5, 0.125]


def test_a_dead_feature_says_it_never_fired(study):
    at = page("feature", arm="base", feature=3)
    assert not at.exception
    assert any("never fired" in c.value for c in at.caption)


def test_interval_ranges_say_that_the_end_intervals_are_open():
    """The pass puts values below the first edge in interval 0 and above the last in the last interval."""
    from dashboard.widgets import interval_range

    assert interval_range(0, 0.01, 0.0215, 15) == "below 0.0215"
    assert interval_range(3, 0.1, 0.215, 15) == "0.1 – 0.215"
    assert interval_range(14, 464.0, 1000.0, 15) == "464 and above"


def test_the_header_counts_the_medical_matches_of_the_rule_that_made_it_a_candidate(study):
    """base 5 ("walk | run | jump": 0 medical top tokens) made a candidate by 9 medical words it fires on: the
    header says 9 fired, not "medical matches 0" (issue 25); base 1 (decoder, 3 matches) still says 3."""
    import duckdb

    with duckdb.connect(str(study / "features.duckdb")) as con:
        con.execute("UPDATE feature_words SET fired_med_matches = 9, is_candidate = true, candidate_by = 'fired' "
                    "WHERE arm = 'base' AND feature = 5")
    metrics = {m.label: m.value for m in page("feature", arm="base", feature=5).metric}
    assert metrics["medical matches"] == "9 fired"
    assert {m.label: m.value for m in page("feature", arm="base", feature=1).metric}["medical matches"] == "3"
