"""`explain --features candidates|emerged|labelled|all|IDS` on the hand-written database (tiny_db, pair=True), whose
answers can be read off its tables: candidates are features with >= 2 medical matches (0, 1, 4), feature 3 never
fired (density 0), finetuned's feature 5 is the model diff's one emerged feature."""

import duckdb
import pytest

from core import labels
from core.config import load_config
from core.errors import StudyInputError
from core.feature_ids import FeatureIdError
from factories import study_toml
from precompute.explain.run import choose_features
from tiny_db import D_SAE, FINGERPRINT, write_tiny_db


@pytest.fixture
def study(tmp_path):
    return tiny_config(tmp_path, ("base", "finetuned"))


def tiny_config(tmp_path, names: tuple[str, ...]):
    arms = [{"name": name, "model": f"m/{name}", "sae_path": f"s/{name}"} for name in names]
    path = tmp_path / "study.toml"
    path.write_text(study_toml(arms, features_db=str(tmp_path / "features.duckdb"),
                               labels_db=str(tmp_path / "labels.duckdb")))
    write_tiny_db(tmp_path / "features.duckdb", arms=names, pair=len(names) == 2)
    return load_config(path)


def chosen(config, arm: str, which: str) -> list[int]:
    with duckdb.connect(config.features_db, read_only=True) as con:
        return choose_features(con, config, arm, which, FINGERPRINT[arm], D_SAE)


@pytest.mark.parametrize("arm, which, expected", [
    ("base", "candidates", [0, 1, 4]),
    ("base", "all", [0, 1, 2, 4, 5]),  # feature 3 never fired: no context to explain it from
    ("finetuned", "emerged", [5]),
    ("base", "emerged", []),  # the first arm of a pair loses or keeps features; it does not gain them
    ("base", "4, 1,4", [1, 4]),  # ids sorted, once each
])
def test_each_choice_picks_the_features_the_tables_say(study, arm, which, expected):
    assert chosen(study, arm, which) == expected


def test_labelled_means_labelled_for_this_sae_only(study):
    path = study.labels_db
    labels.save_label(path, study.name, "base", 2, FINGERPRINT["base"], "medical")
    labels.save_label(path, study.name, "base", 5, FINGERPRINT["base"], "unsure")
    labels.save_label(path, study.name, "base", 0, "an-old-sae", "medical")  # a replaced SAE's label
    labels.save_label(path, study.name, "finetuned", 1, FINGERPRINT["finetuned"], "not_medical")
    assert chosen(study, "base", "labelled") == [2, 5]
    assert chosen(study, "finetuned", "labelled") == [1]


def test_a_feature_emerging_in_two_pairs_is_explained_once(study):
    # a third arm paired with finetuned too (`[[pairs]]` base-finetuned and other-finetuned): feature 5 emerges twice
    with duckdb.connect(study.features_db) as con:
        con.execute("INSERT INTO feature_matches SELECT * REPLACE ('other' AS arm_a) FROM feature_matches "
                    "WHERE arm = 'finetuned'")
    assert chosen(study, "finetuned", "emerged") == [5]


def test_a_bad_choice_names_the_choices(study):
    with pytest.raises(FeatureIdError, match="candidates, emerged, labelled, all"):
        chosen(study, "base", "emergent")


def test_emerged_in_a_one_arm_study_is_one_line_not_an_empty_run(tmp_path):
    with pytest.raises(StudyInputError, match="--features emerged needs a model diff"):
        chosen(tiny_config(tmp_path, ("base",)), "base", "emerged")
