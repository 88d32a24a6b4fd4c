"""Labels are precious: their own file, keyed by the SAE's fingerprint, undoable, by annotator, safe from two sessions
at once, and old files migrate in place."""

import threading

import pytest

from core import labels
from core.errors import StudyInputError


def test_latest_label_wins_and_undo_restores_the_previous_one(tmp_path):
    path = tmp_path / "labels.duckdb"
    labels.save_label(path, "demo", "base", 7, "fp-a", "unsure")
    last = labels.save_label(path, "demo", "base", 7, "fp-a", "medical", note="heart, kidney")
    current = labels.current_labels(path, "demo")
    assert current[["arm", "feature", "label", "note"]].values.tolist() == [["base", 7, "medical", "heart, kidney"]]
    assert labels.undo(path, last) and not labels.undo(path, last)
    assert labels.current_labels(path, "demo").label.tolist() == ["unsure"]
    assert len(labels.history(path, "demo")) == 1


def test_labels_of_another_sae_are_kept_apart_never_attached(tmp_path):
    path = tmp_path / "labels.duckdb"
    labels.save_label(path, "demo", "base", 3, "old-sae", "medical")
    labels.save_label(path, "demo", "base", 4, "new-sae", "not_medical")
    labels.save_label(path, "other-study", "base", 4, "new-sae", "medical")
    current, other = labels.labels_for(path, "demo", {"base": "new-sae"})
    assert current[["feature", "label"]].values.tolist() == [[4, "not_medical"]]
    assert other[["feature", "sae_fingerprint"]].values.tolist() == [[3, "old-sae"]]


def test_reading_before_any_label_creates_nothing(tmp_path):
    path = tmp_path / "labels.duckdb"
    assert labels.current_labels(path, "demo").empty
    assert not path.exists()


def test_an_unknown_label_is_refused(tmp_path):
    with pytest.raises(ValueError, match="medical, not_medical, unsure"):
        labels.save_label(tmp_path / "l.duckdb", "demo", "base", 1, "fp", "maybe")


def test_a_write_that_fails_says_so(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(labels.LabelWriteError, match="could not save the label"):
        labels.save_label(blocker / "labels.duckdb", "demo", "base", 1, "fp", "medical")


def test_two_sessions_labelling_at_once_lose_nothing(tmp_path):
    """8 threads (browser sessions) save 25 labels each at the same time: all 200 are there."""
    path = tmp_path / "labels.duckdb"
    errors = []

    def session(arm_index):
        try:
            for feature in range(25):
                labels.save_label(path, "demo", f"arm{arm_index}", feature, "fp", "medical")
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    current = labels.current_labels(path, "demo")
    assert len(current) == 200 and sorted(current.arm.unique()) == [f"arm{i}" for i in range(8)]


def test_each_annotator_has_one_current_label_and_the_team_one_by_consensus(tmp_path):
    path = tmp_path / "labels.duckdb"
    labels.save_label(path, "demo", "base", 7, "fp", "medical", author="ann")
    labels.save_label(path, "demo", "base", 7, "fp", "not_medical", author="ann")  # ann changes her mind
    labels.save_label(path, "demo", "base", 7, "fp", "medical", author=" bob ")  # stored stripped
    labels.save_label(path, "demo", "base", 8, "fp", "unsure", author="bob")
    mine = labels.annotator_labels(path, "demo")
    assert mine[["feature", "author", "label"]].values.tolist() == [
        [7, "ann", "not_medical"], [7, "bob", "medical"], [8, "bob", "unsure"]]
    team = labels.current_labels(path, "demo")
    assert team[["feature", "label", "rule", "votes"]].values.tolist() == [
        [7, "unsure", "tie", "ann: not_medical · bob: medical"], [8, "unsure", "one annotator", "bob: unsure"]]
    event = labels.save_label(path, "demo", "base", 7, "fp", "medical", note="blood", author="cy", adjudicated=True)
    team = labels.current_labels(path, "demo").set_index("feature")
    assert (team.loc[7, "label"], team.loc[7, "rule"], team.loc[7, "author"]) == ("medical", "adjudicated", "cy")
    assert labels.annotator_labels(path, "demo")["author"].tolist() == ["ann", "bob", "bob"]  # cy only adjudicated
    assert labels.undo(path, event)
    assert labels.current_labels(path, "demo").set_index("feature").loc[7, "rule"] == "tie"


def test_every_read_carries_the_annotator_for_the_export(tmp_path):
    path = tmp_path / "labels.duckdb"
    labels.save_label(path, "demo", "base", 1, "fp", "medical", author="ann")
    labels.save_label(path, "demo", "base", 1, "fp", "medical", author="bob", adjudicated=True)
    events = labels.history(path, "demo")
    assert events[["author", "adjudicated"]].values.tolist() == [["ann", False], ["bob", True]]
    for frame in (labels.current_labels(path, "demo"), labels.labels_for(path, "demo", {"base": "fp"})[0],
                  labels.annotator_labels(path, "demo"), labels.adjudications(path, "demo")):
        assert "author" in frame.columns and len(frame) == 1


def test_a_file_from_before_annotators_is_migrated_in_place_losing_nothing(tmp_path):
    """The first schema had an author column that nobody filled and no adjudication: its events stay, read as one
    annotator "(anonymous)", and new events by name sit beside them."""
    import duckdb

    path = tmp_path / "labels.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SEQUENCE label_event_id")
        con.execute("""CREATE TABLE label_events (id BIGINT PRIMARY KEY DEFAULT nextval('label_event_id'),
            study VARCHAR NOT NULL, arm VARCHAR NOT NULL, feature INTEGER NOT NULL, sae_fingerprint VARCHAR NOT NULL,
            label VARCHAR NOT NULL, note VARCHAR, author VARCHAR, labelled_at TIMESTAMP DEFAULT current_timestamp)""")
        con.execute("INSERT INTO label_events (study, arm, feature, sae_fingerprint, label, note, author) VALUES "
                    "('demo', 'base', 1, 'fp', 'unsure', 'first', NULL), "
                    "('demo', 'base', 1, 'fp', 'medical', 'second', ''), "
                    "('demo', 'base', 2, 'fp', 'not_medical', NULL, NULL)")
    assert labels.history(path, "demo")[["feature", "label", "author", "adjudicated"]].values.tolist() == [
        [1, "unsure", "(anonymous)", False], [1, "medical", "(anonymous)", False],
        [2, "not_medical", "(anonymous)", False]]
    labels.save_label(path, "demo", "base", 1, "fp", "medical", author="ann")
    team = labels.current_labels(path, "demo")
    assert team[["feature", "label", "rule", "author"]].values.tolist() == [
        [1, "medical", "unanimous", "(anonymous), ann"], [2, "not_medical", "one annotator", "(anonymous)"]]
    with duckdb.connect(str(path)) as con:  # the old rows are untouched; the new column is in the file
        assert con.execute("SELECT author, adjudicated FROM label_events ORDER BY id").fetchall() == [
            (None, False), ("", False), (None, False), ("ann", False)]


def test_an_empty_annotator_name_is_one_line_and_saves_nothing(tmp_path):
    path = tmp_path / "labels.duckdb"
    for name in ("", "   ", None):
        with pytest.raises(StudyInputError, match="annotator name is empty"):
            labels.check_annotator(name)
    with pytest.raises(StudyInputError, match="annotator name is empty"):
        labels.save_label(path, "demo", "base", 1, "fp", "medical", author=" ", adjudicated=True)
    with pytest.raises(StudyInputError, match="61 characters long"):
        labels.save_label(path, "demo", "base", 1, "fp", "medical", author="a" * 61)
    assert labels.check_annotator("  Ann ") == "Ann"
    assert not path.exists()


def test_two_annotators_labelling_the_same_features_at_once_lose_nothing(tmp_path):
    """ann and bob (two browsers: two threads) label the same 24 features at the same moment, ann medical and bob
    unsure, and both change their mind on every 4th: each has exactly their own 24 current labels, 60 events."""
    path = tmp_path / "labels.duckdb"
    errors, start = [], threading.Barrier(2)

    def session(author, label):
        try:
            start.wait()
            for feature in range(24):
                labels.save_label(path, "demo", "base", feature, "fp", label, author=author)
                if feature % 4 == 0:
                    labels.save_label(path, "demo", "base", feature, "fp", "not_medical", author=author)
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=session, args=a) for a in (("ann", "medical"), ("bob", "unsure"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(labels.history(path, "demo")) == 60
    mine = labels.annotator_labels(path, "demo")
    expected = {(author, f): "not_medical" if f % 4 == 0 else label
                for author, label in (("ann", "medical"), ("bob", "unsure")) for f in range(24)}
    assert dict(zip(zip(mine["author"], mine["feature"]), mine["label"])) == expected
    team = labels.current_labels(path, "demo")
    assert team["rule"].value_counts().to_dict() == {"tie": 18, "unanimous": 6}
