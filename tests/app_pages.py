"""Opening the dashboard's pages in AppTest on the hand-written database of tests/tiny_db.py."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from factories import study_toml
from tiny_db import write_tiny_db

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


def tiny_study(tmp_path: Path, monkeypatch, **tiny_db_options) -> Path:
    """A two-arm study config whose features database is tiny_db's, made the dashboard's config; returns its folder."""
    arms = [{"name": name, "model": f"m/{name}", "sae_path": f"s/{name}"} for name in ("base", "finetuned")]
    config = tmp_path / "study.toml"
    config.write_text(study_toml(arms, features_db=str(tmp_path / "features.duckdb"),
                                 labels_db=str(tmp_path / "labels.duckdb")))
    monkeypatch.setenv("SAE_DIFF_CONFIG", str(config))
    write_tiny_db(tmp_path / "features.duckdb", **tiny_db_options)
    return tmp_path


def page(name: str, **params) -> AppTest:
    """The page `dashboard/views/<name>.py`, opened with these URL parameters and run once."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params.update({key: str(value) for key, value in params.items()})
    return at.switch_page(f"views/{name}.py").run()


def features_matched(at: AppTest) -> int:
    """The Features page's count, as it says it: "**2,459** features match"."""
    text = next(m.value for m in at.markdown if "features match" in m.value)
    return int(text.split("**")[1].replace(",", ""))
