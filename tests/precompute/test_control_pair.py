"""A declared control end to end (issue 22): base → ft2 (base's SAE with feature PLANTED's encoder negated and
feature ROTATED's decoder turned by 90 degrees) with
control `twin` (base's own model and an exact copy of its SAE). The study derives the pair base → twin and runs every
pair stage on it; identical arms give zero difference on every measure, and the planted change is the only one
beyond the control."""

import duckdb
import numpy as np
import pytest

from core.database import changed_queries, diff_queries
from core.diff_control import controlled_counts, controlled_fates
from pair_study import D_SAE, PLANTED, ROTATED, build_three_arm_study
from precompute.run import run_study
from precompute.stages import PAIR_STAGES


@pytest.fixture(scope="module")
def control_study(tmp_path_factory):
    config = build_three_arm_study(tmp_path_factory.mktemp("control"), [("base", "ft2", "twin")], twin=True)
    report = run_study(config, show_progress=False)
    assert report.published
    return config, report


def read(config, sql, params=()):
    with duckdb.connect(config.features_db, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_the_control_pair_runs_every_pair_stage_after_the_declared_pair(control_study):
    config, report = control_study
    assert read(config, "SELECT arm_a, arm_b, position, control, controls FROM pairs ORDER BY position") == [
        ("base", "ft2", 0, "twin", None), ("base", "twin", 1, None, "ft2")]
    assert sorted(report.seconds[("base", "twin")]) == sorted(PAIR_STAGES)
    with duckdb.connect(config.features_db, read_only=True) as con:
        assert diff_queries.pair_controls(con)[("base", "ft2")] == {"control": "twin", "controls": None}


def test_identical_arms_differ_by_nothing_on_any_measure(control_study):
    config, _ = control_study
    statuses = read(config, "SELECT arm, status, count(*) FROM feature_matches WHERE arm_a = 'base' "
                            "AND arm_b = 'twin' GROUP BY ALL ORDER BY ALL")
    assert statuses == [("base", "dead", 4), ("base", "persist", D_SAE - 4), ("twin", "dead", 4),
                        ("twin", "persist", D_SAE - 4)]
    corr = read(config, "SELECT min(match_corr), min(same_index_corr), min(decoder_cos) FROM feature_matches "
                        "WHERE arm_a = 'base' AND arm_b = 'twin' AND status = 'persist'")[0]
    assert corr == pytest.approx((1.0, 1.0, 1.0), abs=1e-5)
    metrics = dict(read(config, "SELECT stage || '.' || metric, value FROM metrics WHERE arm_a = 'base' "
                                "AND arm_b = 'twin'"))
    assert metrics["similarity.mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["similarity.mean_distance"] == pytest.approx(0.0, abs=1e-5)
    kl = read(config, "SELECT max(max_kl) FROM divergence_rows WHERE arm_a = 'base' AND arm_b = 'twin'")[0][0]
    assert kl == pytest.approx(0.0, abs=1e-6)
    transfer = read(config, "SELECT metric, min(value), max(value) FROM transfer_metrics WHERE arm_a = 'base' "
                            "AND arm_b = 'twin' AND metric IN ('explained_variance', 'l0', 'ce_loss_spliced') "
                            "GROUP BY metric")
    for metric, low, high in transfer:  # each SAE on each (identical) model: the same number four times
        assert low == pytest.approx(high, rel=1e-5), metric


def test_only_the_planted_change_is_beyond_the_control(control_study):
    config, _ = control_study
    with duckdb.connect(config.features_db, read_only=True) as con:
        pair_rows = diff_queries.fate_statistics(con, ("base", "ft2"))
        control_rows = diff_queries.fate_statistics(con, ("base", "twin"))
    controlled = controlled_fates(pair_rows, control_rows, ("base", "ft2"), "twin", fdr=0.05)
    beyond = sorted(controlled.loc[controlled["beyond"], ["arm", "feature", "status"]].itertuples(index=False))
    assert [(arm, feature) for arm, feature, _ in beyond] == [("base", PLANTED), ("ft2", PLANTED)]
    assert {status for _, _, status in beyond} <= {"disappear", "emerge"}
    counts = controlled_counts(pair_rows, control_rows, controlled, ("base", "ft2"), "twin").set_index(
        ["arm", "status"])
    assert counts.loc[("base", "disappear")].tolist() == [1, 0, 1]  # features, control, beyond
    assert counts.loc[("ft2", "emerge")].tolist() == [1, 0, 1]
    assert counts.loc[("ft2", "persist"), "control"] == D_SAE - 4
    # against itself the control calls nothing
    itself = controlled_fates(control_rows, control_rows, ("base", "twin"), "twin", fdr=0.05)
    assert not itself["beyond"].any()
    assert np.nanmax(itself["exceedance"]) == 1.0


def test_a_rotated_decoder_is_the_persisting_feature_whose_output_moved_most_and_the_control_moves_none(
        control_study):
    config, _ = control_study
    with duckdb.connect(config.features_db, read_only=True) as con:
        moved = changed_queries.moved_persisting(con, ("base", "ft2"), limit=3)
        control = changed_queries.moved_persisting(con, ("base", "twin"), limit=D_SAE)
    # its activations are base's own (it persists at its own index at correlation 1) but it writes elsewhere
    assert moved.loc[0, ["feature", "match_feature"]].tolist() == [ROTATED, ROTATED]
    assert moved.loc[0, "match_corr"] == pytest.approx(1.0, abs=1e-5)
    assert moved.loc[0, "decoder_cos"] == pytest.approx(0.0, abs=1e-5)
    assert moved.loc[1, "decoder_cos"] == pytest.approx(1.0, abs=1e-5)  # every other feature writes as before
    assert len(control) == D_SAE - 4 and control["decoder_cos"].min() == pytest.approx(1.0, abs=1e-5)


def test_the_model_diff_leads_with_what_is_beyond_the_control(control_study, monkeypatch):
    from app_pages import page

    config, _ = control_study
    monkeypatch.setenv("SAE_DIFF_CONFIG", config.source_path)
    at = page("diff")
    assert not at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert "**1** of ft2's 1 emerged features and **1** of base's 1 disappeared ones" in text
    assert "gives emerged 0 · disappeared 0" in text
    # ft2's SAE is base's with one feature changed: feature i is one feature in both, and only PLANTED drifted from it
    assert "**1** of 20 ft2 features drifted from their own index further than the control SAE's features do" in text
    counts = next(d.value for d in at.dataframe if "beyond" in d.value.columns and "side" in d.value.columns)
    # base's features persist or disappear, ft2's persist or emerge: four rows
    assert counts[["side", "status", "features", "control", "beyond"]].values.tolist() == [
        ["base", "persist", 19, 20, 0], ["base", "disappear", 1, 0, 1], ["ft2", "persist", 19, 20, 0],
        ["ft2", "emerge", 1, 0, 1]]
    fates = next(d.value for d in at.dataframe if "open" in d.value.columns)  # emerged features first
    assert fates[["arm", "feature", "beyond"]].values.tolist() == [["ft2", PLANTED, True]]
    control_pair = page("diff", pair="base-twin")
    assert not control_pair.exception
    assert any("This is the **control pair** of base → ft2" in i.value for i in control_pair.info)
    planted = page("feature", arm="base", feature=PLANTED)
    assert not planted.exception
    line = next(c.value for c in planted.caption if "disappeared between base and ft2" in c.value)
    corr = read(config, "SELECT match_corr FROM feature_matches WHERE arm_a = 'base' AND arm_b = 'ft2' AND arm = 'base' "
                        "AND feature = ?", [PLANTED])[0][0]
    assert f"at {corr:.3f}, {0.8 - corr:.3f} below the threshold 0.8" in line  # the fate's margin
    assert "**beyond the control** (0% of the control base → twin's" in line


def test_what_changed_opens_the_study_and_states_the_control(control_study, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from app_pages import APP

    config, _ = control_study
    monkeypatch.setenv("SAE_DIFF_CONFIG", config.source_path)
    at = AppTest.from_file(APP, default_timeout=60).run()  # a study with a pair opens on What changed
    assert not at.exception
    assert at.title[0].value == "What changed"
    text = "\n".join(m.value for m in at.markdown)
    assert text.startswith("From base to ft2: 1 of 1 emerged and 1 of 1 disappeared features are beyond the control "
                           "pair base → twin (which alone gives 0 emerged, 0 disappeared).")
    assert "the lens has no direction to read" in text  # the two arms run one model: its mean difference is 0
    assert "No feature of base's SAE changes its activation between the two models" in text
    emerged = next(d.value for d in at.dataframe if "top_tokens" in d.value.columns)
    assert emerged["feature"].tolist() == [PLANTED]
    assert [pair for pair in at.selectbox[0].options] == ["base → ft2"]  # the control pair is not a choice here
