"""What steering is scored against follows the study's candidate rule: on tests/tiny_db.py's hand-made database
each feature's decoder tokens (ids 0-2, e.g. " heart | kidney | the" for feature 0) differ from the tokens it fires
on (id 10 + f, its first top token, and the byte token <0x8F>, id 99); feature 3 never fired. And Table 1's query
counts the random control beside the paper's rule."""

import duckdb
import pandas as pd
import pytest

from core.database.queries import steering_targets
from core.steer_scores import TARGETS, scoring_target
from tiny_db import TOP, write_tiny_db

FEATURES = [0, 1, 2, 3, 4, 5]
DECODER = {f: [0, 1, 2] for f in FEATURES}
FIRED = {f: [10 + f, 99] for f in FEATURES if f != 3}


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """candidate_by as written by hand: 0 by the decoder, 1 by firing, 4 by both, the rest no candidate."""
    path = write_tiny_db(tmp_path_factory.mktemp("targets") / "f.duckdb")
    with duckdb.connect(str(path)) as writer:
        writer.execute("UPDATE feature_words SET candidate_by = CASE feature WHEN 0 THEN 'decoder' WHEN 1 THEN 'fired' "
                       "WHEN 4 THEN 'both' END WHERE arm = 'base'")
    with duckdb.connect(str(path), read_only=True) as reader:
        yield reader


def picked(con, rule: str) -> dict[int, tuple[str, list[int]]]:
    frame = steering_targets(con, "base", rule, FEATURES)
    return {int(f): (group["target"].iloc[0], group["token_id"].tolist()) for f, group in frame.groupby("feature")}


def test_the_decoder_rule_scores_every_feature_against_its_top_tokens(con):
    assert picked(con, "decoder") == {f: ("decoder", DECODER[f]) for f in FEATURES}
    frame = steering_targets(con, "base", "decoder", [0])
    assert frame["token"].tolist() == TOP[0] and frame["value"].tolist() == [3.0, 2.0, 1.0]  # the projections


def test_the_fired_rule_scores_against_the_tokens_it_fires_on_and_a_feature_that_never_fired_by_its_decoder(con):
    expected = {f: ("fired", FIRED[f]) for f in FIRED} | {3: ("decoder", DECODER[3])}
    assert picked(con, "fired") == expected
    frame = steering_targets(con, "base", "fired", [0])
    assert frame["token"].tolist() == [" heart", "<0x8F>"] and frame["value"].tolist() == [75.0, 25.0]  # firings


def test_the_either_rule_reads_what_made_the_feature_a_candidate(con):
    chosen = picked(con, "either")
    assert chosen[1] == ("fired", FIRED[1]) and chosen[4] == ("fired", FIRED[4])  # by firing, by both
    assert chosen[0] == ("decoder", DECODER[0])  # by the decoder
    assert chosen[2] == ("decoder", DECODER[2]) and chosen[5] == ("decoder", DECODER[5])  # no candidate: the paper's


def test_features_come_back_in_the_order_asked_and_an_unknown_rule_is_refused(con):
    assert steering_targets(con, "base", "fired", [4, 0])["feature"].drop_duplicates().tolist() == [4, 0]
    assert steering_targets(con, "base", "decoder", []).empty
    assert set(TARGETS) == {scoring_target(rule, by) for rule in ("decoder", "fired") for by in (None, "both")}
    with pytest.raises(ValueError, match="candidate rule must be one of"):
        scoring_target("firing", "fired")


def test_table_1_counts_the_control_beside_the_papers_rule(tmp_path):
    """Hand-written steer_features rows: base has 3 features, 2 pass the paper's rule, 1 of those beats random too
    (and one that fails the paper's rule beats random); finetuned ran without a control."""
    from core.database.queries import steering_table

    path = write_tiny_db(tmp_path / "f.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute("""INSERT INTO steer_features (arm, feature, coefficient, samples, mean_unsteered, mean_steered,
                       passing, measure, target, random_directions, mean_random, beats_random, random_beaten,
                       passing_controlled) VALUES
                       ('base', 0, 50, 3, 0.2, 0.5, true, 'sentence', 'fired', 5, 0.3, true, 5, true),
                       ('base', 1, 50, 3, 0.2, 0.4, true, 'sentence', 'fired', 5, 0.6, false, 1, false),
                       ('base', 2, 50, 3, 0.5, 0.4, false, 'sentence', 'decoder', 5, 0.3, true, 4, false),
                       ('finetuned', 0, 50, 3, 0.2, 0.5, true, 'sentence', 'decoder', 0, 'NaN', NULL, NULL, NULL)""")
        table = steering_table(con).set_index("arm")
    assert table.loc["base", "passing"] == 2  # the paper's rule, as before
    assert table.loc["base", "beats random"] == 2 and table.loc["base", "passing, beats unsteered and random"] == 1
    assert table.loc["base", "share passing both (%)"] == pytest.approx(33.3)
    assert table.loc["base", "scored against"] == "fired 2, decoder 1"
    assert table.loc["base", "mean random"] == pytest.approx(0.4)  # (0.3 + 0.6 + 0.3) / 3
    assert table.loc["finetuned", "passing"] == 1 and table.loc["finetuned", "scored against"] == "decoder 1"
    assert all(pd.isna(table.loc["finetuned", c]) for c in ("beats random", "passing, beats unsteered and random",
                                                            "share passing both (%)", "mean random"))
