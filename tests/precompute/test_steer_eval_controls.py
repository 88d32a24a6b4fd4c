"""steer-eval's random control and scoring target on a tiny GPT-2 (real 50k-token tokenizer, so every text has
words to score): a feature planted to write " heart" beats all five random directions of its norm; features whose
directions are themselves random (Gaussian rows, drawn like the controls) beat them about half the time; the
target follows the study's candidate rule and every table `evaluate_arm` returns fits its declared schema."""

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from core import database as db
from core.config import SteeringConfig
from core.database.schema import conform
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from core.steer_controls import direction_seed, generate_along, random_direction
from core.steering import PAPER_PROMPT, SamplingSettings
from factories import build_gpt2_folder, build_sae, gpt2_tokenizer
from precompute.steer_eval import (RANDOM_COLUMNS, SAMPLE_COLUMNS, STEER_TABLES, evaluate_arm, evaluate_feature,
                                   feature_verdicts)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HOOK = "blocks.1.hook_resid_pre"
PLANTED = 0  # its decoder row is the unit unembedding direction of "Ġheart"; rows 1.. are Gaussian
RANDOM_FEATURES = list(range(1, 17))
HEART = pd.DataFrame({"token": [" heart"], "value": [1.0]})


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    """(the arm, its steering coefficient): 5 × the largest activation norm at the hook over the paper's prompt.
    Weights of std 0.5 (test_steering says why: so that the logit lens can make one token dominate)."""
    folder = build_gpt2_folder(tmp_path_factory.mktemp("control") / "model", gpt2_tokenizer(), initializer_range=0.5)
    hf, tok = load_hf_model(str(folder))
    model = hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")
    torch.manual_seed(0)  # the random rows: a module fixture runs before the per-test seeding
    sae = build_sae(d_in=32, d_sae=1 + len(RANDOM_FEATURES), hook_name=HOOK)
    with torch.no_grad():
        direction = model.W_U[:, tok.convert_tokens_to_ids("Ġheart")]
        sae.W_dec[PLANTED] = direction / direction.norm()
    _, cache = model.run_with_cache(PAPER_PROMPT, names_filter=[HOOK])
    return LoadedArm("tiny", model, sae, HOOK, sae.cfg.d_sae, "cpu", DEFAULT_PROCESSING, hf), \
        5 * float(cache[HOOK].norm(dim=-1).max())


def verdicts(loaded, features, steer, target=HEART) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows, random_rows = [], []
    for feature in features:
        mine, theirs = evaluate_feature(loaded, feature, target, steer, 0, None)
        rows, random_rows = rows + mine, random_rows + theirs
    samples = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    randoms = pd.DataFrame(random_rows, columns=list(RANDOM_COLUMNS))
    return feature_verdicts(samples, randoms).set_index("feature"), samples, randoms


def test_a_feature_that_writes_its_target_beats_every_random_direction_of_its_norm(arm):
    loaded, coefficient = arm
    steer = SteeringConfig(coefficient=coefficient, max_new_tokens=6, samples=2)
    verdict, samples, randoms = verdicts(loaded, [PLANTED], steer)
    assert all(" heart" in text for text in samples["steered_text"])  # the planted feature writes it
    row = verdict.loc[PLANTED]
    assert row.random_directions == 5 and row.random_beaten == 5
    assert row.beats_random and row.passing and row.passing_controlled
    assert row.mean_steered > row.mean_random > -1
    assert len(randoms) == 2 * 5 and randoms["direction_seed"].tolist() == [direction_seed(0, (PLANTED,), j)
                                                                           for j in range(5)] * 2
    # One control text by hand: the same prompt, seed and settings, the direction rebuilt from its seed alone.
    by_hand = generate_along(loaded, torch.from_numpy(random_direction(randoms["direction_seed"][7], 32, coefficient))
                             .float(), PAPER_PROMPT, SamplingSettings(max_new_tokens=6, seed=1))
    assert randoms["text"][7] == by_hand.text and randoms["sample"][7] == 1 and randoms["direction"][7] == 2


def test_features_with_random_directions_beat_random_at_about_chance(arm):
    """A Gaussian decoder row is drawn like its controls, so its rank among the six texts is uniform: it beats each
    control half the time in expectation (per feature 0-5 of 5, mean 2.5, sd 1.7). Over 16 features the share of
    controls beaten has sd 0.085; the bounds are 3 sd. The planted feature, against the same target, beat 5 of 5."""
    loaded, coefficient = arm
    steer = SteeringConfig(coefficient=coefficient, max_new_tokens=4, samples=1)
    verdict, _, _ = verdicts(loaded, RANDOM_FEATURES, steer)
    share_beaten = verdict["random_beaten"].sum() / (5 * len(RANDOM_FEATURES))
    assert 0.25 <= share_beaten <= 0.75
    assert 3 <= verdict["beats_random"].sum() <= 13
    assert (verdict["passing_controlled"] == (verdict["passing"] & verdict["beats_random"])).all()


def hand_made_database(path, candidate_by: str):
    """The planted feature's decoder reads " heart" and it fires most on " Battalion", as written here by hand (the
    token ids are not read: texts are scored against the tokens' text)."""
    con, _ = db.open_build(path, fresh=True)
    con.execute("INSERT INTO top_tokens VALUES ('tiny', 0, 'top', 0, 2612, ' heart', 4.0)")
    con.execute("INSERT INTO fired_tokens VALUES ('tiny', 0, 0, 29182, ' Battalion', 30, 12.0)")
    con.execute("INSERT INTO feature_words (arm, feature, candidate_by) VALUES ('tiny', 0, ?)", [candidate_by])
    return con


@pytest.mark.parametrize("rule, candidate_by, target", [("decoder", "decoder", "decoder"),
                                                        ("either", "fired", "fired"), ("fired", None, "fired")])
def test_the_study_rule_picks_the_target_and_every_table_fits_its_schema(arm, tmp_path, rule, candidate_by, target):
    loaded, coefficient = arm
    steer = SteeringConfig(coefficient=coefficient, max_new_tokens=6, samples=2, random_directions=3)
    config = SimpleNamespace(steering=steer, seed=0, medical_vocabulary=SimpleNamespace(candidates=rule))
    con = hand_made_database(tmp_path / "f.duckdb", candidate_by)
    tables = evaluate_arm(con, SimpleNamespace(config=config, embeddings=None), loaded, [PLANTED], False)
    tables = {t.name: conform(t, tables[t.name], "steering").to_pandas() for t in STEER_TABLES}
    con.close()
    row = tables["steer_features"].iloc[0]
    assert row.target == target and row.random_directions == 3 and len(tables["steer_random_samples"]) == 2 * 3
    assert row.passing_controlled == (row.passing and row.beats_random)
    heart = verdicts(loaded, [PLANTED], steer)[0].loc[PLANTED]
    if target == "decoder":  # scored against " heart", the word it writes: the same numbers as by hand
        assert row.mean_steered == pytest.approx(heart.mean_steered) and row.beats_random
    else:  # scored against " Battalion": the same texts, further from the target
        assert row.mean_steered < heart.mean_steered - 0.1


def test_no_random_directions_leave_the_papers_rule_alone(arm, tmp_path):
    loaded, coefficient = arm
    steer = SteeringConfig(coefficient=coefficient, max_new_tokens=4, samples=1, random_directions=0)
    config = SimpleNamespace(steering=steer, seed=0, medical_vocabulary=SimpleNamespace(candidates="decoder"))
    con = hand_made_database(tmp_path / "f.duckdb", "decoder")
    tables = evaluate_arm(con, SimpleNamespace(config=config, embeddings=None), loaded, [PLANTED], False)
    con.close()
    stored = conform(STEER_TABLES[0], tables["steer_features"], "steering").to_pylist()[0]
    assert stored["passing"] is True and stored["random_directions"] == 0
    assert stored["beats_random"] is None and stored["passing_controlled"] is None and stored["random_beaten"] is None
    empty = conform(STEER_TABLES[2], tables["steer_random_samples"], "steering")  # no rows, the declared columns
    assert empty.num_rows == 0 and empty.num_columns == 7
