"""Agreement between annotators: Cohen's kappa against tables worked by hand, and the consensus rule."""

import math

import numpy as np
import pandas as pd
import pytest

from core import agreement

LABELS = ("medical", "not_medical", "unsure")


def votes(*rows: tuple) -> pd.DataFrame:
    """(author, arm, feature, label) rows as annotator_labels returns them (one fingerprint, ids in row order)."""
    frame = pd.DataFrame(rows, columns=["author", "arm", "feature", "label"])
    return frame.assign(sae_fingerprint="fp", note="", labelled_at=pd.Timestamp("2026-12-01"),
                        id=range(1, len(frame) + 1))


def no_adjudications() -> pd.DataFrame:
    return votes().iloc[0:0]


def from_table(table: list[list[int]], labels=LABELS) -> tuple[list[str], list[str]]:
    """Two annotators' labels, feature by feature, that make this confusion table (row: first, column: second)."""
    first, second = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            first += [labels[i]] * count
            second += [labels[j]] * count
    return first, second


def test_kappa_of_a_two_by_two_table_worked_by_hand():
    """            B medical  B not
    A medical         4         1
    A not             2         3
    n = 10, p_o = 7/10. A says medical 5/10, B 6/10: p_e = 0.5*0.6 + 0.5*0.4 = 0.5. kappa = (0.7-0.5)/(1-0.5) = 0.4."""
    first, second = from_table([[4, 1], [2, 3]], ("medical", "not_medical"))
    assert agreement.confusion(first, second, LABELS).tolist() == [[4, 1, 0], [2, 3, 0], [0, 0, 0]]
    assert agreement.cohen_kappa(first, second, LABELS) == pytest.approx(0.4)


def test_kappa_of_a_three_label_table_and_each_label_one_vs_rest_worked_by_hand():
    """              B med  B not  B unsure
    A medical         3      0      1
    A not_medical     0      2      1
    A unsure          1      0      2
    All labels: p_o = 7/10; rows 4,3,3 and columns 4,2,4 of 10: p_e = .16 + .06 + .12 = .34; kappa = .36/.66 = 6/11.
    medical vs rest: [[3, 1], [1, 5]], p_o = .8, p_e = .4*.4 + .6*.6 = .52, kappa = .28/.48 = 7/12.
    not_medical vs rest: [[2, 1], [0, 7]], p_o = .9, p_e = .3*.2 + .7*.8 = .62, kappa = .28/.38 = 14/19.
    unsure vs rest: [[2, 1], [2, 5]], p_o = .7, p_e = .3*.4 + .7*.6 = .54, kappa = .16/.46 = 8/23."""
    first, second = from_table([[3, 0, 1], [0, 2, 1], [1, 0, 2]])
    assert agreement.cohen_kappa(first, second, LABELS) == pytest.approx(6 / 11)
    frame = votes(*[("ann", "base", i, label) for i, label in enumerate(first)],
                  *[("bob", "base", i, label) for i, label in enumerate(second)])
    table = agreement.pair_agreement(frame, LABELS).set_index("label")
    assert table["features"].tolist() == [10] * 4 and set(table["annotator_a"]) == {"ann"}
    assert table.loc["all labels", "agreement"] == pytest.approx(0.7)
    expected = {"all labels": 6 / 11, "medical": 7 / 12, "not_medical": 14 / 19, "unsure": 8 / 23}
    assert table["kappa"].to_dict() == pytest.approx(expected)
    assert table.loc["not_medical", "agreement"] == pytest.approx(0.9)


def test_kappa_matches_sklearn_on_random_labels():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for n in (5, 40, 300):
        first = rng.choice(LABELS, size=n, p=[0.5, 0.3, 0.2]).tolist()
        second = [a if rng.random() < 0.6 else rng.choice(LABELS) for a in first]
        ours = agreement.cohen_kappa(first, second, LABELS)
        assert ours == pytest.approx(sklearn.cohen_kappa_score(first, second, labels=list(LABELS)))


def test_kappa_edge_cases_perfect_opposite_and_undefined():
    assert agreement.cohen_kappa(["medical", "unsure"], ["medical", "unsure"], LABELS) == 1.0
    # Each says medical half the time, never together: p_o = 0, p_e = .5, kappa = -1.
    assert agreement.cohen_kappa(["medical", "unsure"], ["unsure", "medical"], LABELS) == -1.0
    # Both said medical to everything: p_e = 1, chance explains it all, kappa is undefined.
    assert math.isnan(agreement.cohen_kappa(["medical"] * 3, ["medical"] * 3, LABELS))
    assert math.isnan(agreement.cohen_kappa([], [], LABELS))
    with pytest.raises(ValueError, match="pair up"):
        agreement.cohen_kappa(["medical"], [], LABELS)


def test_pairs_count_only_the_features_both_labelled():
    frame = votes(("ann", "base", 1, "medical"), ("bob", "base", 1, "medical"), ("ann", "base", 2, "unsure"),
                  ("cy", "base", 2, "unsure"), ("bob", "finetuned", 1, "unsure"))
    table = agreement.pair_agreement(frame, LABELS)
    shared = table[table["label"] == "all labels"][["annotator_a", "annotator_b", "features", "agreement"]]
    # bob and cy share no feature: no row; base 1 and finetuned 1 are different features.
    assert shared.values.tolist() == [["ann", "bob", 1, 1.0], ["ann", "cy", 1, 1.0]]
    assert agreement.pair_agreement(votes(("ann", "base", 1, "medical")), LABELS).empty


def test_consensus_rule_majority_tie_and_adjudication():
    frame = votes(
        ("ann", "base", 1, "medical"), ("bob", "base", 1, "medical"), ("cy", "base", 1, "not_medical"),  # 2 of 3
        ("ann", "base", 2, "medical"), ("bob", "base", 2, "not_medical"),  # 1 - 1: a tie
        ("ann", "base", 3, "not_medical"), ("bob", "base", 3, "not_medical"),  # unanimous
        ("cy", "base", 4, "unsure"),  # one annotator
        ("ann", "base", 5, "medical"), ("bob", "base", 5, "unsure"))  # a tie, then adjudicated
    judged = votes(("dee", "base", 5, "not_medical")).assign(id=99, note="a liquid, not blood")
    out = agreement.consensus(frame, judged).set_index("feature")
    assert out["label"].to_dict() == {1: "medical", 2: "unsure", 3: "not_medical", 4: "unsure", 5: "not_medical"}
    assert out["rule"].to_dict() == {1: "majority", 2: "tie", 3: "unanimous", 4: "one annotator", 5: "adjudicated"}
    assert out.loc[1, "author"] == "ann, bob" and out.loc[1, "id"] == 2  # bob's is the latest event behind it
    assert out.loc[1, "votes"] == "ann: medical · bob: medical · cy: not_medical"
    assert out.loc[5, "author"] == "dee" and out.loc[5, "note"] == "a liquid, not blood" and out.loc[5, "id"] == 99
    assert out["annotators"].to_dict() == {1: 3, 2: 2, 3: 2, 4: 1, 5: 2}
    counts = agreement.label_counts(out.reset_index(), LABELS).iloc[0].to_dict()
    assert counts == {"arm": "base", "medical": 1, "not_medical": 2, "unsure": 2, "adjudicated": 1, "unanimous": 1,
                      "majority": 1, "tie": 1, "one annotator": 1}


def test_an_adjudication_stands_when_every_annotator_label_is_undone():
    judged = votes(("dee", "base", 7, "medical"))
    out = agreement.consensus(no_adjudications(), judged)
    assert out[["feature", "label", "rule", "annotators"]].values.tolist() == [[7, "medical", "adjudicated", 0]]


def test_disagreements_list_split_features_and_their_adjudication():
    frame = votes(("ann", "base", 1, "medical"), ("bob", "base", 1, "medical"),
                  ("ann", "base", 2, "medical"), ("bob", "base", 2, "unsure"),
                  ("ann", "finetuned", 0, "not_medical"), ("bob", "finetuned", 0, "medical"),
                  ("cy", "finetuned", 0, "medical"))
    judged = votes(("dee", "finetuned", 0, "medical"))
    out = agreement.disagreements(frame, judged)
    assert out[["arm", "feature", "annotators", "adjudicated"]].values.tolist() == [
        ["base", 2, 2, None], ["finetuned", 0, 3, "medical"]]
    assert out["votes"].iloc[0] == "ann: medical · bob: unsure"
    assert agreement.disagreements(frame.iloc[:2], no_adjudications()).empty
    assert agreement.disagreements(no_adjudications(), no_adjudications()).empty
