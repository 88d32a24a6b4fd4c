"""The Family page on a hand-set family (tests/core/test_family.py's ROWS in tests/family_db.py): the Sankey's
numbers equal a brute-force count of the database's rows, a flow lists its features, the SLERP curve stored
beside the merge is drawn with its chosen t, a lineage and the proxy test along it; one line on a one-pair study."""

import base64
import json
import math

import numpy as np
import pytest

from app_pages import page, tiny_study
from core.merge_curve import SlerpCurve, write_curve
from dashboard import family_data
from factories import study_toml
from family_db import write_family_db, write_proxy_facts
from tests.core.test_family import ROWS, brute_counts

GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.fixture
def family_study(tmp_path, monkeypatch):
    merge_model = tmp_path / "models" / "M"
    merge_model.mkdir(parents=True)
    write_curve(SlerpCurve("medical", "code", GRID, [0.5, 0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5], 0.15, 0.12),
                merge_model)
    arms = [{"name": name, "model": str(merge_model) if name == "M" else f"m/{name}", "sae_path": f"s/{name}"}
            for name in ("base", "A", "B", "M")]
    config = tmp_path / "study.toml"
    config.write_text(study_toml(arms, features_db=str(tmp_path / "features.duckdb"),
                                 labels_db=str(tmp_path / "labels.duckdb")))
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(config))
    write_family_db(tmp_path / "features.duckdb", ROWS)
    write_proxy_facts(tmp_path / "features.duckdb")
    return tmp_path


def values(array) -> list:
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def sankey_numbers(at) -> dict:
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    labels = spec["node"]["label"]
    link = spec["link"]
    return {(labels[s], labels[t]): v for s, t, v in zip(values(link["source"]), values(link["target"]),
                                                          values(link["value"]))}


@pytest.mark.parametrize("one_to_one", [False, True])
def test_sankey_numbers_equal_a_brute_force_count_of_the_database(family_study, one_to_one):
    at = page("family")
    if one_to_one:
        at.toggle(key=family_data.FAMILY_ONE_TO_ONE).set_value(True).run()
    assert not at.exception
    numbers = sankey_numbers(at)
    into_a, into_b = brute_counts(one_to_one)[:2]
    assert numbers[("base", "A (from base)")] == into_a and numbers[("base", "B (from base)")] == into_b
    traced_from_a = numbers[("A (from base)", "M")] + numbers[("A (emerged)", "M")]
    assert traced_from_a == brute_counts(one_to_one)[4]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["M features traceable to A or B"] == str(brute_counts(one_to_one)[6])
    assert metrics["of which persisting from the base"] == str(brute_counts(one_to_one)[8])


def test_a_flow_lists_its_features_with_links(family_study):
    at = page("family")
    flows = family_data_labels(at)
    at.selectbox(key=family_data.FAMILY_FLOW).set_value(flows.index("A (emerged) → M (2)")).run()
    table = at.dataframe[0].value
    assert list(table["feature"]) == [1, 3]
    assert table["open"].iloc[0].endswith("feature?arm=M&feature=1")


def family_data_labels(at) -> list[str]:
    return list(at.selectbox(key=family_data.FAMILY_FLOW).options)


def test_slerp_curve_with_chosen_t_and_dashed_base(family_study):
    at = page("family")
    spec = json.loads(at.get("plotly_chart")[1].proto.spec)
    shapes = spec["layout"]["shapes"]
    dashed = sorted(s["y0"] for s in shapes if s["line"].get("dash") == "dash")
    assert dashed == [0.12, 0.15]  # the base model's accuracies
    assert [s["x0"] for s in shapes if s["line"].get("dash") == "dot"] == [0.5]  # 0.5 - 0.4 t = 0.1 + 0.4 t
    assert any("t = 0.500" in c.value for c in at.caption)


def test_lineage_and_the_proxy_test_along_it(family_study):
    at = page("family")
    at.selectbox(key=family_data.FAMILY_ARM).set_value("M")
    at.number_input(key=family_data.FAMILY_FEATURE).set_value(3)
    at.text_input(key=family_data.FAMILY_HYPOTHESIS).set_value("=").run()
    assert not at.exception
    steps = at.dataframe[1].value
    assert list(zip(steps["partner_arm"], steps["partner"].fillna(-1).astype(int))) == [
        ("A", 4), ("base", -1), ("B", 0), ("base", 0)]
    proxy = at.dataframe[2].value.set_index("arm")
    assert proxy.loc["M", "llr"] == pytest.approx(math.log((60 / 70) / 0.02))
    assert proxy.loc["A", "llr"] == pytest.approx(math.log(0.5 / 0.02))
    assert proxy.loc["B", "llr"] == -math.inf
    assert np.isnan(proxy.loc["base", "llr"])  # base #0 has no stored activations here


def test_a_feature_beyond_the_arm_is_one_line(family_study):
    at = page("family")
    at.selectbox(key=family_data.FAMILY_ARM).set_value("B")
    at.number_input(key=family_data.FAMILY_FEATURE).set_value(5).run()
    assert [i.value for i in at.info] == ["B has features 0 to 4."]


def test_a_study_with_one_pair_gets_one_line(tmp_path, monkeypatch):
    tiny_study(tmp_path, monkeypatch, pair=True)
    at = page("family")
    assert not at.exception and len(at.info) == 1
    assert at.info[0].value.startswith("No model family in this study: it declares 1 pair, and a family needs four")


def test_the_page_guards_a_missing_database(family_study):
    (family_study / "features.duckdb").unlink()
    at = page("family")
    assert not at.exception and "No features database yet" in at.info[0].value


def test_a_pair_without_matching_is_one_line(tmp_path, monkeypatch):
    # code -> merge was skipped (say its arms share no tokenizer): no feature_matches rows for it
    arms = [{"name": name, "model": f"m/{name}", "sae_path": f"s/{name}"} for name in ("base", "A", "B", "M")]
    config = tmp_path / "study.toml"
    config.write_text(study_toml(arms, features_db=str(tmp_path / "features.duckdb"),
                                 labels_db=str(tmp_path / "labels.duckdb")))
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(config))
    write_family_db(tmp_path / "features.duckdb", [r for r in ROWS if {r[0], r[2]} != {"B", "M"}])
    at = page("family")
    assert not at.exception and len(at.info) == 1
    assert at.info[0].value.startswith("no matching of M against B in this database")


def test_explanation_scores_by_fate(family_study):
    from core import explanations
    from core.explanations import Explanation

    path = family_study / "explanations.duckdb"
    # A0, A1 persist into M, A2 does not (0.7), A5 is dead in A -> M (left out); B0 persists, B1 does not
    for arm, feature, sim in [("A", 0, .6), ("A", 1, .5), ("A", 2, .1), ("A", 5, .9), ("B", 0, .7), ("B", 1, .2)]:
        explanations.save_explanation(path, "tiny", Explanation(arm, feature, f"s-{arm}", "text", "local:test", 1,
                                                                sim, 0.7, 80, 5, 5))
    at = page("family")
    assert not at.exception
    table = next(d.value for d in at.dataframe if "median" in d.value.columns)
    rows = {(r.arm, r.fate): (r.count, round(r.median, 2)) for r in table.itertuples()}
    assert rows == {("A", "persists into M"): (2, 0.55), ("A", "does not"): (1, 0.1),
                    ("B", "persists into M"): (1, 0.7), ("B", "does not"): (1, 0.2)}
    spec = json.loads(at.get("plotly_chart")[2].proto.spec)
    assert sorted(t["name"] for t in spec["data"]) == ["A: does not (1)", "A: persists into M (2)",
                                                       "B: does not (1)", "B: persists into M (1)"]
