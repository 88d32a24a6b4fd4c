"""The Overview page: the demo's build report when there is one, a guard (not a traceback) when data is missing."""

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from factories import study_toml

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
REPORT = {
    "seed": 0, "fast": True, "medical_perplexity_change": -0.3,
    "perplexity": {"base": {"general": 200.0, "medical": 600.0}, "finetuned": {"general": 230.0, "medical": 420.0}},
    "saes": {arm: {"hook_name": "blocks.1.hook_resid_pre", "d_in": 96, "d_sae": 768, "l0": 80.0,
                   "explained_variance": 0.81, "mse": 0.01, "dead_fraction": 0.004, "n_tokens": 5000}
             for arm in ("base", "finetuned")},
}


def run_app(monkeypatch, config: Path) -> AppTest:
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(config))
    return AppTest.from_file(APP, default_timeout=30).run()


def write_study(tmp_path: Path) -> Path:
    arms = [{"name": name, "model": f"m/{name}", "sae_path": f"s/{name}"} for name in ("base", "finetuned")]
    config = tmp_path / "study.toml"
    config.write_text(study_toml(arms, features_db=str(tmp_path / "demo" / "features.duckdb")))
    return config


def test_build_report_and_missing_database_guard(tmp_path, monkeypatch):
    config = write_study(tmp_path)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "manifest.json").write_text(json.dumps(REPORT))
    at = run_app(monkeypatch, config)
    assert not at.exception
    assert "medical perplexity by -30%" in at.markdown[0].value + "".join(m.value for m in at.markdown)
    sae_table = at.dataframe[1].value
    assert list(sae_table["arm"]) == ["base", "finetuned"] and list(sae_table["explained variance"]) == [0.81, 0.81]
    assert "No features database yet" in at.info[0].value
    assert "python -m precompute run --config" in at.info[0].value


def test_without_any_data_the_page_guides_instead_of_failing(tmp_path, monkeypatch):
    at = run_app(monkeypatch, write_study(tmp_path))
    assert not at.exception
    assert len(at.dataframe) == 1  # only the arms table
    assert "No features database yet" in at.info[0].value


def test_unreadable_config_is_an_error_message(tmp_path, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nnme = 'x'\n")
    at = run_app(monkeypatch, bad)
    assert not at.exception
    assert "did you mean 'name'" in at.error[0].value
