"""The Map page and the Feature page's similar features, on the hand-written database (tiny_db, pair=True):
base's feature f sits at (f, 0) and finetuned's at (f, 1); f's nearest is f + 1 in its own SAE and f in the other."""

import base64
import json

import numpy as np
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.testing.v1 import AppTest

from app_pages import page, tiny_study
from core import explanations, labels
from core.explanations import Explanation
from dashboard import state_keys as keys
from dashboard.feature_map import picked_feature
from tiny_db import FINGERPRINT


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch, pair=True)


def values(array) -> list:
    """A plotly figure's array as a list (plotly 6+ writes numeric arrays as {"dtype", "bdata": base64})."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def click(at: AppTest, arm: str, feature: int) -> AppTest:
    """What the browser sends when a point is clicked: the chart's selection event (a widget value AppTest has no
    setter for), with the point's customdata [arm, feature], beside every other widget's current value."""
    chart = at.get("plotly_chart")[0].proto
    states = WidgetStates()
    states.CopyFrom(at._tree.get_widget_states())
    event = {"selection": {"points": [{"curve_number": 0, "point_index": feature, "x": float(feature), "y": 0.0,
                                       "customdata": [arm, feature]}],
                           "point_indices": [feature], "box": [], "lasso": []}}
    states.widgets.add(id=chart.id, string_value=json.dumps(event))
    return at._run(states)


def test_the_map_draws_every_feature_of_both_arms_at_its_place(study):
    at = page("map")
    assert not at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    traces = {t["name"]: t for t in spec["data"]}
    assert set(traces) == {"base", "finetuned"}  # coloured by arm at first
    assert values(traces["finetuned"]["y"]) == [1.0] * 6
    assert values(traces["base"]["x"]) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert traces["base"]["customdata"][4] == ["base", 4]
    assert traces["base"]["hovertext"][0].startswith("<b>base · 0</b> (persist)<br>")


def test_colouring_by_fate_splits_the_points_by_their_status(study):
    at = page("map")
    at.segmented_control(key=keys.MAP_COLOUR).set_value("fate").run()
    traces = {t["name"]: len(values(t["x"])) for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert traces == {"dead": 2, "disappear": 2, "emerge": 1, "persist": 6, "rare": 1}


def traces_of(at: AppTest) -> dict[str, dict]:
    return {t["name"]: t for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}


def test_candidate_label_and_coherence_colour_the_points_and_the_hover_holds_the_explanation(study):
    labels.save_label(study / "labels.duckdb", "tiny", "base", 1, FINGERPRINT["base"], "medical")
    labels.save_label(study / "labels.duckdb", "tiny", "finetuned", 2, FINGERPRINT["finetuned"], "not_medical")
    labels.save_label(study / "labels.duckdb", "tiny", "base", 2, "an-old-sae", "medical")  # never shown
    explanations.save_explanation(study / "explanations.duckdb", "tiny", Explanation(
        "base", 1, FINGERPRINT["base"], "lungs & the liver", "local:test", 1, 0.6, 0.8))
    at = page("map")
    assert "<i>lungs &amp; the liver</i>" in traces_of(at)["base"]["hovertext"][1]  # escaped, after the top tokens
    at.segmented_control(key=keys.MAP_COLOUR).set_value("medical candidate").run()
    traces = traces_of(at)
    assert {name: values(t["x"]) for name, t in traces.items()} == {
        "candidate": [0.0, 1.0, 4.0] * 2, "not a candidate": [2.0, 3.0, 5.0] * 2}  # >= 2 matches: 0, 1, 4
    at.segmented_control(key=keys.MAP_COLOUR).set_value("label").run()
    traces = traces_of(at)
    assert {name: len(values(t["x"])) for name, t in traces.items()} == {"medical": 1, "not_medical": 1,
                                                                         "unlabelled": 10}
    assert traces["medical"]["customdata"] == [["base", 1]]
    at.segmented_control(key=keys.MAP_COLOUR).set_value("coherence").run()
    traces = traces_of(at)
    assert traces["no value"]["customdata"] == [["base", 3], ["finetuned", 3]]  # coherence NULL: no valid tokens
    assert values(traces["coherence"]["marker"]["color"]) == pytest.approx([0.5, 0.7, 0.2, 0.3, 0.6] * 2)


def test_clicking_a_point_opens_its_feature(study):
    at = click(page("map"), "finetuned", 3)
    assert not at.exception
    assert at.title[0].value == "finetuned · feature 3"
    assert at.query_params["arm"] == "finetuned" and at.query_params["feature"] == "3"


def test_the_feature_page_lists_similar_features_with_links(study):
    at = page("feature", arm="base", feature=4)
    assert not at.exception
    frames = [d.value for d in at.dataframe if "open" in d.value.columns and "top tokens" in d.value.columns]
    own, cross, correlated = frames
    assert own["feature"].tolist() == [5, 0] and own["cosine"].tolist() == ["0.900", "0.500"]
    assert own["open"].tolist() == ["/feature?arm=base&feature=5", "/feature?arm=base&feature=0"]
    assert cross["feature"].tolist() == [4, 5] and cross["open"][0] == "/feature?arm=finetuned&feature=4"
    assert cross["act. corr"].tolist() == ["", ""]  # base 4 correlates with finetuned 1, not with its nearest 4 or 5
    assert correlated["feature"].tolist() == [1] and correlated["act. corr"][0] == "0.900"
    captions = " ".join(c.value for c in at.caption)
    assert "same residual basis" in captions


def test_the_cross_correlation_shows_beside_the_cosine_where_the_matching_kept_the_pair(study):
    at = page("feature", arm="base", feature=0)
    cross = [d.value for d in at.dataframe if "act. corr" in d.value.columns][0]
    assert cross["feature"].tolist() == [0, 1] and cross["act. corr"][0] == "0.950"


def test_similar_features_leave_a_missing_number_blank_never_none(study):
    """base 4's nearest in finetuned (4, 5) are below the matching threshold and its one partner (finetuned 1) is
    not among its nearest: those cells are blank, as the caption says, where the grid printed "None" (issue 25)."""
    at = page("feature", arm="base", feature=4)
    own, cross, correlated = [d.value for d in at.dataframe if "open" in d.value.columns]
    assert cross["act. corr"].tolist() == ["", ""] and cross["cosine"].tolist() == ["0.990", "0.300"]
    assert correlated["cosine"].tolist() == [""] and correlated["act. corr"].tolist() == ["0.900"]
    assert not any(frame.isna().any().any() for frame in (own, cross, correlated))


def test_a_selection_names_its_feature_from_the_customdata():
    assert picked_feature({"selection": {"points": [{"customdata": ["base", 7]}]}}) == ("base", 7)
    assert picked_feature({"selection": {"points": []}}) is None and picked_feature(None) is None
