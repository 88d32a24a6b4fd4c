"""Labels are precious: their own file, keyed by the SAE's fingerprint, undoable, safe from two sessions at once."""

import threading

import pytest

from core import labels


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
