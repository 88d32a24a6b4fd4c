"""The explanations database: its own file, keyed by the SAE's decoder fingerprint, latest explanation shown."""

import math
import multiprocessing

import pytest

from core import explanations
from core.explanations import Explanation


def _item(feature, fingerprint="fp-a", text="the word heart", **kw):
    return Explanation("base", feature, fingerprint, text, "local:test", 1, **kw)


def test_saved_explanations_are_read_back_with_their_scores(tmp_path):
    path = tmp_path / "explanations.duckdb"
    assert explanations.current_explanations(path, "s", {"base": "fp-a"}).empty and not path.exists()
    explanations.save_explanation(path, "s", _item(3, simulation=0.5, detection=0.75, n_tokens=40, n_activating=5,
                                                    n_non_activating=5))
    explanations.save_explanation(path, "s", _item(4, simulation=float("nan")))
    frame = explanations.current_explanations(path, "s", {"base": "fp-a"})
    assert frame[["feature", "explanation", "simulation", "detection", "n_tokens"]].values.tolist()[0] == \
        [3, "the word heart", 0.5, 0.75, 40]
    assert math.isnan(frame.loc[frame["feature"] == 4, "simulation"].iloc[0])  # NaN stored as NULL
    assert explanations.explained_features(path, "s", "base", "fp-a", "local:test", 1) == {3, 4}
    assert explanations.explained_features(path, "s", "base", "fp-a", "local:test", 2) == set()  # a new prompt
    assert explanations.explained_features(path, "s", "base", "fp-a", "openai:x", 1) == set()


def test_the_latest_explanation_of_a_feature_is_shown(tmp_path):
    path = tmp_path / "e.duckdb"
    explanations.save_explanation(path, "s", _item(3, text="first"))
    explanations.save_explanation(path, "s", _item(3, text="second"))
    assert explanations.current_explanations(path, "s", {"base": "fp-a"})["explanation"].tolist() == ["second"]


def test_an_explanation_of_another_sae_is_never_shown(tmp_path):
    path = tmp_path / "e.duckdb"
    explanations.save_explanation(path, "s", _item(3, fingerprint="old-sae"))
    explanations.save_explanation(path, "s", _item(5, fingerprint="new-sae"))
    shown = explanations.current_explanations(path, "s", {"base": "new-sae"})
    assert shown["feature"].tolist() == [5]
    assert explanations.other_sae_count(path, "s", {"base": "new-sae"}) == 1
    assert explanations.current_explanations(path, "other-study", {"base": "new-sae"}).empty


def _write_many(path, start):
    for feature in range(start, start + 20):
        explanations.save_explanation(path, "s", _item(feature))


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "e.duckdb"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(path, start)) for start in (0, 100)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(explanations.current_explanations(path, "s", {"base": "fp-a"})) == 40
