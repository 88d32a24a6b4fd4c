"""A study of three arms (base, finetuned = base's SAE permuted, ft2 = base's SAE with feature PLANTED negated)
with two declared pairs, base → ft2 and base → finetuned: each pair's tables, stages and metrics name it by
arm_a, arm_b; PLANTED persists in one pair and disappears in the other; dropping a pair drops its rows; a
change to one arm recomputes only the pairs it is in."""

import dataclasses
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from core.config import ArmConfig, PairConfig
from core.database.schema import PAIR_TABLES
from pair_study import D_SAE, PERMUTATION, PLANTED
from precompute.run import run_study
from precompute.stages import ARM_STAGES, PAIR_STAGES

PAIRS = [("base", "ft2"), ("base", "finetuned")]
INVERSE = np.argsort(PERMUTATION)  # A's feature i is B's feature INVERSE[i]


def query(config, sql, params=None):
    with duckdb.connect(config.features_db, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_each_declared_pair_runs_and_its_rows_name_its_two_arms(three_arm_study):
    config, report = three_arm_study
    assert report.published
    assert {key: sorted(s) for key, s in report.seconds.items() if isinstance(key, tuple)} == {
        pair: sorted(PAIR_STAGES) for pair in PAIRS}
    assert query(config, "SELECT arm_a, arm_b FROM pairs ORDER BY position") == PAIRS
    # Every arm runs one model, so nothing changes between them: the change stage keeps no rows, tokens or features
    changed_only = {"feature_change_contexts", "diff_lens_tokens", "diff_lens_features"}
    for table in PAIR_TABLES:
        expected = [] if table in changed_only else sorted(PAIRS)
        assert sorted(query(config, f"SELECT DISTINCT arm_a, arm_b FROM {table}")) == expected, table
    # a pair's feature_matches rows: both arms' features, each matched into the pair's other arm
    sides = query(config, "SELECT arm_a, arm_b, arm, match_arm, count(*) FROM feature_matches "
                          "GROUP BY ALL ORDER BY ALL")
    assert sides == [("base", "finetuned", "base", "finetuned", D_SAE), ("base", "finetuned", "finetuned", "base", D_SAE),
                     ("base", "ft2", "base", "ft2", D_SAE), ("base", "ft2", "ft2", "base", D_SAE)]
    stages = query(config, "SELECT arm, arm_a, arm_b, count(*) FROM stages GROUP BY ALL ORDER BY ALL")
    n_arm, n_pair = len(ARM_STAGES), len(PAIR_STAGES)
    assert stages == [("base", None, None, n_arm), ("finetuned", None, None, n_arm), ("ft2", None, None, n_arm),
                      (None, "base", "finetuned", n_pair), (None, "base", "ft2", n_pair)]
    assert query(config, "SELECT count(*) FROM metrics WHERE arm IS NULL AND arm_a IS NULL") == [(0,)]


def test_a_planted_feature_persists_in_one_pair_and_disappears_in_the_other(three_arm_study):
    config, _ = three_arm_study
    fates = dict(((b, f), (s, m, c)) for b, f, s, m, c in query(
        config, "SELECT arm_b, feature, status, match_feature, match_corr FROM feature_matches WHERE arm = 'base'"))
    assert fates["finetuned", PLANTED][:2] == ("persist", INVERSE[PLANTED])  # B's feature 15
    assert fates["finetuned", PLANTED][2] == pytest.approx(1.0, abs=1e-5)
    assert fates["ft2", PLANTED][0] == "disappear" and fates["ft2", PLANTED][2] < 0.8
    fired = [f for f in range(D_SAE) if fates["finetuned", f][0] != "dead"]
    assert len(fired) == D_SAE - 4  # the four features with b_enc = -100 never fire
    for pair in ("finetuned", "ft2"):  # every other live feature is the same feature in both pairs
        others = [fates[pair, f] for f in fired if f != PLANTED]
        assert all(s == "persist" and c == pytest.approx(1.0, abs=1e-5) for s, _, c in others), pair
    assert [fates["ft2", f][1] for f in fired if f != PLANTED] == [f for f in fired if f != PLANTED]


def test_the_features_view_is_one_row_per_feature_with_the_first_pairs_fate(three_arm_study):
    config, _ = three_arm_study
    assert query(config, "SELECT arm, count(*), count(DISTINCT feature) FROM features GROUP BY arm ORDER BY arm") == [
        ("base", D_SAE, D_SAE), ("finetuned", D_SAE, D_SAE), ("ft2", D_SAE, D_SAE)]
    view = dict(((a, f), (s, m)) for a, f, s, m in query(
        config, "SELECT arm, feature, diff_status, match_arm FROM features WHERE feature IN (?, ?)",
        [PLANTED, int(INVERSE[PLANTED])]))
    assert view["base", PLANTED] == ("disappear", "ft2")  # base's first declared pair is base → ft2
    assert view["finetuned", int(INVERSE[PLANTED])] == ("persist", "base")  # finetuned's only pair


def _copy(config, tmp_path: Path, **changes):
    target = tmp_path / "features.duckdb"
    shutil.copyfile(config.features_db, target)
    return dataclasses.replace(config, features_db=str(target), **changes)


@pytest.mark.slow
def test_dropping_a_pair_drops_its_rows_and_recomputes_nothing(three_arm_study, tmp_path):
    config = _copy(three_arm_study[0], tmp_path, pairs=(PairConfig("base", "finetuned"),))
    report = run_study(config, show_progress=False)
    assert report.published and not report.up_to_date and not report.seconds
    for table in (*PAIR_TABLES, "stages", "metrics", "pairs"):
        assert query(config, f"SELECT count(*) FROM {table} WHERE arm_b = 'ft2'") == [(0,)], table
    assert query(config, "SELECT diff_status FROM features WHERE arm = 'base' AND feature = ?", [PLANTED]) == [
        ("persist",)]  # base's first pair is now base → finetuned
    assert query(config, "SELECT count(*) FROM features WHERE arm = 'ft2' AND diff_status IS NOT NULL") == [(0,)]


@pytest.mark.slow
def test_a_changed_arm_recomputes_only_its_own_stages_and_its_pairs(three_arm_study, tmp_path):
    config = three_arm_study[0]
    ft2 = ArmConfig("ft2", config.arm("ft2").model, sae_path=config.arm("base").sae_path)  # now base's own SAE
    config = _copy(config, tmp_path, arms=(config.arm("base"), config.arm("finetuned"), ft2))
    report = run_study(config, show_progress=False)
    assert sorted(map(str, report.seconds)) == ["('base', 'ft2')", "ft2"]  # base → finetuned stands
    assert query(config, "SELECT status, match_feature FROM feature_matches WHERE arm_b = 'ft2' AND arm = 'base' "
                         "AND feature = ?", [PLANTED]) == [("persist", PLANTED)]
