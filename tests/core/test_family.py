"""Family flows and chains on hand-set matches (threshold 0.8), each count against the number worked by hand and
against a brute-force walk over the rows; one line for an arm the study lacks."""

import numpy as np
import pytest

from core.errors import StudyInputError
from core.family import Family, chains, family_counts, find_families, lineage, match_side

FAMILY = Family("base", "A", "B", "M")
# (arm, feature, match_arm, best match, corr, status, assigned partner); None where the column is NULL.
ROWS = [
    ("base", 0, "A", 0, .95, "persist", 0), ("base", 1, "A", 0, .85, "persist", None),
    ("base", 2, "A", 1, .5, "disappear", None), ("base", 3, "A", 2, .9, "persist", 2),
    ("base", 4, "A", None, None, "dead", None), ("base", 5, "A", 3, .82, "persist", 3),
    ("A", 0, "base", 0, .95, "persist", 0), ("A", 1, "base", 2, .5, "emerge", None),
    ("A", 2, "base", 3, .9, "persist", 3), ("A", 3, "base", 5, .82, "persist", 5),
    ("A", 4, "base", 1, .3, "emerge", None), ("A", 5, "base", None, None, "dead", None),
    ("base", 0, "B", 0, .9, "persist", 0), ("base", 1, "B", 1, .4, "disappear", None),
    ("base", 2, "B", 2, .88, "persist", 2), ("base", 3, "B", 0, .81, "persist", None),
    ("base", 4, "B", None, None, "dead", None), ("base", 5, "B", 3, .2, "disappear", None),
    ("B", 0, "base", 0, .9, "persist", 0), ("B", 1, "base", 1, .4, "emerge", None),
    ("B", 2, "base", 2, .88, "persist", 2), ("B", 3, "base", 5, .2, "emerge", None),
    ("B", 4, "base", 3, .6, "emerge", None),
    ("A", 0, "M", 0, .9, "persist", 0), ("A", 1, "M", 1, .85, "persist", 1), ("A", 2, "M", 2, .7, "disappear", None),
    ("A", 3, "M", 4, .83, "persist", 4), ("A", 4, "M", 3, .9, "persist", 3), ("A", 5, "M", None, None, "dead", None),
    ("M", 0, "A", 0, .9, "persist", 0), ("M", 1, "A", 1, .85, "persist", 1), ("M", 2, "A", 2, .7, "emerge", None),
    ("M", 3, "A", 4, .9, "persist", 4), ("M", 4, "A", 3, .83, "persist", 3), ("M", 5, "A", 1, .6, "emerge", None),
    ("B", 0, "M", 0, .92, "persist", 0), ("B", 1, "M", 5, .3, "disappear", None),
    ("B", 2, "M", 2, .86, "persist", 2), ("B", 3, "M", 1, .2, "disappear", None),
    ("B", 4, "M", 5, .5, "disappear", None),
    ("M", 0, "B", 0, .92, "persist", 0), ("M", 1, "B", 3, .2, "emerge", None), ("M", 2, "B", 2, .86, "persist", 2),
    ("M", 3, "B", 0, .81, "persist", None), ("M", 4, "B", 1, .1, "emerge", None),
    ("M", 5, "B", 4, .5, "emerge", None),
]


def sides_of(rows):
    grouped = {}
    for arm, feature, other, match, corr, status, assigned in rows:
        grouped.setdefault((arm, other), []).append((feature, match, corr, status, assigned,
                                                     corr if assigned is not None else None))
    return {key: match_side(*zip(*values)) for key, values in grouped.items()}


SIDES = sides_of(ROWS)


def partner(arm, feature, other, one_to_one):
    """The brute-force walk's step: the row itself."""
    for row_arm, row_feature, row_other, match, _, status, assigned in ROWS:
        if (row_arm, row_feature, row_other) == (arm, feature, other):
            if one_to_one:
                return assigned
            return match if status == "persist" else None
    raise KeyError((arm, feature, other))


def features(arm):
    return sorted({row[1] for row in ROWS if row[0] == arm})


def brute_counts(one_to_one):
    step = lambda arm, f, other: partner(arm, f, other, one_to_one)  # noqa: E731
    into_a = {f for f in features("base") if step("base", f, "A") is not None}
    into_b = {f for f in features("base") if step("base", f, "B") is not None}
    from_base = {arm: {f for f in features(arm) if step(arm, f, "base") is not None} for arm in "AB"}
    traced = {arm: {m: step("M", m, arm) for m in features("M") if step("M", m, arm) is not None} for arm in "AB"}
    traceable = set(traced["A"]) | set(traced["B"])
    persisting = {m for m in traceable if any(traced[arm].get(m) in from_base[arm] for arm in "AB")}
    return (len(into_a), len(into_b), len(into_a | into_b), len(into_a & into_b), len(traced["A"]),
            len(traced["B"]), len(traceable), len(set(traced["A"]) & set(traced["B"])), len(persisting),
            len(traceable - persisting))


def counts_tuple(counts):
    return (counts.base_into_a, counts.base_into_b, counts.base_into_either, counts.base_into_both,
            counts.merge_from_a, counts.merge_from_b, counts.merge_traceable, counts.merge_from_both,
            counts.merge_persisting_from_base, counts.merge_emerged_in_finetuning)


def test_best_match_counts_worked_by_hand():
    counts = family_counts(FAMILY, SIDES)
    # base 0 1 3 5 into A, 0 2 3 into B; M0-M4 traceable, all but M1 (A1 emerged) through a parent from the base.
    assert counts_tuple(counts) == (4, 3, 5, 2, 4, 3, 5, 2, 4, 1)
    assert (counts.a_from_base, counts.a_emerged, counts.b_from_base, counts.b_emerged) == (3, 2, 2, 3)
    assert counts.d_sae == {"base": 6, "A": 6, "B": 5, "M": 6}
    assert dict(((s, t), n) for s, t, n in counts.flows) == {
        ("base", "A (from base)"): 4, ("base", "B (from base)"): 3, ("A (from base)", "M"): 2,
        ("A (emerged)", "M"): 2, ("B (from base)", "M"): 3, ("B (emerged)", "M"): 0}


def test_one_to_one_counts_worked_by_hand():
    counts = family_counts(FAMILY, SIDES, one_to_one=True)
    # b1 loses A0 to b0 and b3 loses B0 to b0; M3 keeps only A4 (emerged), so it no longer persists from the base.
    assert counts_tuple(counts) == (3, 2, 4, 1, 4, 2, 5, 1, 3, 2)


@pytest.mark.parametrize("one_to_one", [False, True])
def test_counts_equal_a_brute_force_walk(one_to_one):
    assert counts_tuple(family_counts(FAMILY, SIDES, one_to_one)) == brute_counts(one_to_one)


@pytest.mark.parametrize("one_to_one", [False, True])
def test_chains_equal_a_brute_force_walk(one_to_one):
    table = chains(FAMILY, SIDES, one_to_one)
    for f in features("base"):
        for arm in "AB":
            mid = partner("base", f, arm, one_to_one)
            end = partner(arm, mid, "M", one_to_one) if mid is not None else None
            key = arm.lower()
            assert table[f"{key}_feature"][f] == (-1 if mid is None else mid)
            assert table[f"{key}_merge_feature"][f] == (-1 if end is None else end)


def test_chain_values_by_hand():
    table = chains(FAMILY, SIDES)
    assert list(table["a_feature"]) == [0, 0, -1, 2, -1, 3]
    assert list(table["a_merge_feature"]) == [0, 0, -1, -1, -1, 4]  # A2 -> M2 only at 0.7
    assert list(table["b_merge_feature"]) == [0, -1, 2, 0, -1, -1]
    assert table["a_corr"][5] == pytest.approx(.82) and np.isnan(table["a_corr"][2])
    assert table["b_merge_corr"][3] == pytest.approx(.92)


def test_lineage_of_a_merge_feature():
    steps = [(s.arm, s.feature, s.partner_arm, s.partner, round(s.corr, 2)) for s in lineage(FAMILY, SIDES, "M", 3)]
    # up through A4 (which emerged in A: its best base match correlates 0.3) and through B0 (from base 0)
    assert steps == [("M", 3, "A", 4, .9), ("A", 4, "base", -1, .3), ("M", 3, "B", 0, .81), ("B", 0, "base", 0, .9)]


def test_families_are_found_from_declared_pairs():
    pairs = [("base", "A"), ("base", "B"), ("A", "M"), ("B", "M"), ("base", "base_resae")]
    assert find_families(pairs) == [FAMILY]
    assert find_families(pairs[:3]) == []


def test_an_arm_not_in_the_study_is_one_line():
    with pytest.raises(StudyInputError, match="family merge arm 'merged' is not in the study") as err:
        Family("base", "A", "B", "merged").check(["base", "A", "B", "M"])
    assert "\n" not in str(err.value)
    with pytest.raises(StudyInputError, match="needs the pairs A -> M"):
        FAMILY.check(["base", "A", "B", "M"], [("base", "A"), ("base", "B"), ("B", "M")])
    with pytest.raises(StudyInputError, match="no matching of M against A in this database"):
        family_counts(FAMILY, {k: v for k, v in SIDES.items() if k != ("M", "A")})
    with pytest.raises(StudyInputError, match="not in the family"):
        lineage(FAMILY, SIDES, "other", 0)


def test_sides_read_back_from_a_database(tmp_path):
    import duckdb

    from core.database.family_queries import declared_pairs, match_sides, study_arms
    from tests.family_db import FAMILY_PAIRS, write_family_db

    path = write_family_db(tmp_path / "family.duckdb", ROWS)
    con = duckdb.connect(str(path), read_only=True)
    assert declared_pairs(con) == FAMILY_PAIRS and study_arms(con) == ["base", "A", "B", "M"]
    family = find_families(declared_pairs(con))[0].check(study_arms(con), declared_pairs(con))
    read = match_sides(con, family)
    assert counts_tuple(family_counts(family, read)) == counts_tuple(family_counts(FAMILY, SIDES))
    assert counts_tuple(family_counts(family, read, True)) == counts_tuple(family_counts(FAMILY, SIDES, True))


def test_flows_list_the_features_they_count():
    from core.family import family_flows

    flows = {(f.source, f.target): f for f in family_flows(FAMILY, SIDES)["flows"]}
    assert list(flows[("base", "A (from base)")].features) == [0, 1, 3, 5]
    assert flows[("base", "A (from base)")].arm == "base"
    assert list(flows[("A (emerged)", "M")].features) == [1, 3] and flows[("A (emerged)", "M")].arm == "M"
    assert list(flows[("B (from base)", "M")].features) == [0, 2, 3]
