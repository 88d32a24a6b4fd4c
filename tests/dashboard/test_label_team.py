"""Labelling as a team on the Label page: two annotators in two sessions, the second pass, the agreement they reach
(Cohen's kappa worked by hand), adjudication, and the Overview's counts by the stated rule."""

import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import labels as labels_db
from app_pages import page, tiny_study
from tiny_db import FINGERPRINT


@pytest.fixture
def study(tmp_path, monkeypatch):
    return tiny_study(tmp_path, monkeypatch)


def save(study: Path, author: str, feature: int, label: str, arm: str = "base", adjudicated: bool = False) -> None:
    labels_db.save_label(study / "labels.duckdb", "tiny", arm, feature, FINGERPRINT[arm], label, author=author,
                         adjudicated=adjudicated)


def label_on_page(at: AppTest, feature: int, label: str, arm: str = "base", suffix: str = "") -> AppTest:
    at.radio(key=f"label_choice_{arm}_{feature}{suffix}").set_value(label)
    return at.button(key=f"label_save_{arm}_{feature}{suffix}").click().run()


def table_with(at: AppTest, column: str):
    """The first table on the page with this column (AppTest does not find a dataframe by its key)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def team(study: Path) -> dict[int, tuple[str, str]]:
    frame = labels_db.current_labels(study / "labels.duckdb", "tiny")
    return {int(f): (label, rule) for f, label, rule in zip(frame["feature"], frame["label"], frame["rule"])}


def test_two_annotators_in_two_sessions_keep_their_own_labels_and_the_second_pass_hides_only_mine(study):
    """tiny_db's base queue: candidates 1 (3 matches), 0 and 4 (2, coherence 0.5 > 0.3)."""
    ann, bob, cy = (page("label", annotator=name) for name in ("ann", "bob", "cy"))
    assert ann.subheader[0].value == bob.subheader[0].value == cy.subheader[0].value == "base · feature 1"
    label_on_page(ann, 1, "medical")
    assert ann.subheader[0].value == "base · feature 0"  # first pass: no one labelled it
    label_on_page(bob, 1, "unsure")  # bob's page still showed feature 1: his label is saved beside ann's
    assert team(study) == {1: ("unsure", "tie")}
    assert bob.subheader[0].value == "base · feature 0"
    assert cy.run().subheader[0].value == "base · feature 0"  # cy saved nothing: her first pass moves on
    bob.radio(key="label_queue_mode").set_value("second").run()
    assert bob.subheader[0].value == "base · feature 0"  # bob labelled 1; 0 is next for him
    ann.radio(key="label_queue_mode").set_value("second").run()
    assert ann.subheader[0].value == "base · feature 0"
    assert any("You labelled 1 of the 3 candidates of base" in c.value for c in ann.caption)
    fresh = page("label", annotator="cy", queue="second")  # cy labelled nothing: feature 1 leads her pass
    assert fresh.subheader[0].value == "base · feature 1"
    assert fresh.radio(key="label_choice_base_1").value is None  # others' labels are not suggested to her
    assert {m.label: m.value for m in fresh.metric}["label"] == "hidden"  # nor is the team's (a tie: unsure)
    assert {m.label: m.value for m in page("label", annotator="cy").metric}["label"] == "—"  # first pass: feature 0


def test_two_sessions_saving_at_the_same_time_lose_nothing(study):
    """ann and bob go through their second pass of the base candidates (1, 0, 4: the queue hides only their own
    labels, so each meets all three whatever the other does), in two threads at once."""
    sessions = {name: page("label", annotator=name, queue="second") for name in ("ann", "bob")}
    choice = {"ann": "medical", "bob": "not_medical"}
    errors, start = [], threading.Barrier(2)

    def label_all(name: str) -> None:
        try:
            start.wait()
            at = sessions[name]
            for feature in (1, 0, 4):
                assert at.subheader[0].value == f"base · feature {feature}", name
                label_on_page(at, feature, choice[name])
                assert not at.exception and not at.error, name
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=label_all, args=(name,)) for name in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    events = labels_db.history(study / "labels.duckdb", "tiny")
    assert sorted(zip(events["author"], events["feature"], events["label"])) == sorted(
        (name, f, choice[name]) for name in ("ann", "bob") for f in (0, 1, 4))
    assert team(study) == {0: ("unsure", "tie"), 1: ("unsure", "tie"), 4: ("unsure", "tie")}


def test_agreement_shows_kappa_worked_by_hand_and_the_disagreements(study):
    """ann: 0 medical, 1 medical, 4 not_medical; bob: 0 medical, 1 unsure, 4 not_medical. p_o = 2/3. ann gives
    medical 2/3, not_medical 1/3; bob medical, unsure, not_medical 1/3 each: p_e = 2/9 + 1/9 = 1/3,
    kappa = (2/3 - 1/3) / (2/3) = 0.50. medical one-vs-rest: ann [y y n], bob [y n n]: p_o = 2/3,
    p_e = 2/3*1/3 + 1/3*2/3 = 4/9, kappa = (2/9) / (5/9) = 0.40. not_medical: identical, 1.00. unsure: ann never,
    bob once: p_o = 2/3 = p_e, kappa = 0.00."""
    for feature, label in ((0, "medical"), (1, "medical"), (4, "not_medical")):
        save(study, "ann", feature, label)
    for feature, label in ((0, "medical"), (1, "unsure"), (4, "not_medical")):
        save(study, "bob", feature, label)
    at = page("label", annotator="ann")
    table = table_with(at, "features both labelled")
    assert table.to_dict("records") == [{
        "annotators": "ann · bob", "features both labelled": 3, "agree": pytest.approx(2 / 3), "κ": "0.50",
        "κ medical": "0.40", "κ not medical": "1.00", "κ unsure": "0.00"}]
    split = table_with(at, "votes")
    assert split[["arm", "feature", "votes"]].values.tolist() == [["base", 1, "ann: medical · bob: unsure"]]
    assert any("1 features with different labels**, 1 waiting for adjudication" in m.value for m in at.markdown)


def test_adjudication_settles_a_disagreement_for_the_team(study):
    save(study, "ann", 4, "medical")
    save(study, "bob", 4, "not_medical")
    save(study, "ann", 0, "medical")
    save(study, "bob", 0, "medical")
    at = page("label", annotator="dee", queue="adjudicate")
    assert at.subheader[0].value == "base · feature 4"  # the one disagreement; 0 is agreed
    assert any("**Labels so far:** ann: medical · bob: not_medical" in m.value for m in at.markdown)
    label_on_page(at, 4, "not_medical", suffix="_adjudicate")
    assert team(study) == {0: ("medical", "unanimous"), 4: ("not_medical", "adjudicated")}
    assert any("No disagreement on base waits for adjudication" in s.value for s in at.success)
    mine = labels_db.annotator_labels(study / "labels.duckdb", "tiny")  # dee adjudicated; she did not vote
    assert sorted(mine["author"].unique()) == ["ann", "bob"]
    at.button(key="label_undo").click().run()  # undo takes the adjudication back
    assert team(study)[4] == ("unsure", "tie") and at.subheader[0].value == "base · feature 4"


def test_a_link_to_an_unknown_queue_says_so_in_one_line(study):
    at = page("label", queue="third")
    assert [e.value for e in at.error] == ["queue='third' in the link: the queue is one of first, second, adjudicate"]


def test_the_overview_counts_labels_by_the_stated_rule(study):
    """base 0: ann and bob medical (unanimous); 1: ann medical, bob unsure (a tie: unsure); 4: ann, bob and cy
    not_medical, medical, medical (majority medical); finetuned 2: ann not_medical then adjudicated medical by dee."""
    for author, feature, label in (("ann", 0, "medical"), ("bob", 0, "medical"), ("ann", 1, "medical"),
                                   ("bob", 1, "unsure"), ("ann", 4, "not_medical"), ("bob", 4, "medical"),
                                   ("cy", 4, "medical")):
        save(study, author, feature, label)
    save(study, "ann", 2, "not_medical", arm="finetuned")
    save(study, "dee", 2, "medical", arm="finetuned", adjudicated=True)
    at = page("overview")
    assert not at.exception
    assert any("an adjudicated label wins; otherwise the label most annotators gave" in m.value for m in at.markdown)
    counts = table_with(at, "tie").set_index("arm")
    assert counts.loc["base", ["medical", "not medical", "unsure", "unanimous", "by majority", "tie",
                               "annotators"]].tolist() == [2, 0, 1, 1, 1, 1, 3]
    assert counts.loc["finetuned", ["medical", "adjudicated", "annotators"]].tolist() == [1, 1, 1]
    table2 = table_with(at, "scope")
    labelled = table2[(table2["arm"] == "base") & (table2["scope"] == "labelled medical")]
    assert labelled["features"].tolist() == [2]  # Table 2 counts by the same rule: 0 and 4, not the tie 1
