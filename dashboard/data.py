"""The one module that finds and reads the study's files for the pages (cached, never stale)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import database as db
from core.config import StudyConfig, load_config
from core.errors import StudyInputError

DEFAULT_CONFIG = "configs/demo.toml"


def config_path() -> str:
    """`--config` after `streamlit run dashboard/app.py --`, else $SAE_DIFF_CONFIG, else the demo."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=os.environ.get("SAE_DIFF_CONFIG", DEFAULT_CONFIG))
    return parser.parse_known_args(sys.argv[1:])[0].config


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False)
def _load_config(path: str, mtime: float) -> StudyConfig:
    return load_config(path)


def study_config() -> StudyConfig:
    """The study config; raises StudyInputError with the reason when it cannot be read."""
    path = config_path()
    return _load_config(path, _mtime(Path(path)))


@st.cache_data(show_spinner=False)
def _read_json(path: str, mtime: float) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def build_report(config: StudyConfig) -> dict[str, Any] | None:
    """The demo build's manifest.json (beside the features database), or None for a study without one."""
    path = config.output_dir / "manifest.json"
    return _read_json(str(path), _mtime(path))


def features_db_exists(config: StudyConfig) -> bool:
    return Path(config.features_db).is_file()


def features_db_version(config: StudyConfig) -> tuple[float, int]:
    """Changes whenever a new database is published (a rename gives a new inode): the key of cached queries."""
    try:
        stat = Path(config.features_db).stat()
    except OSError:
        return (0.0, 0)
    return (stat.st_mtime, stat.st_ino)


def features_db_current(config: StudyConfig) -> bool:
    """The database exists and has this code's schema (else the page shows how to rebuild it)."""
    return db.file_schema_version(Path(config.features_db)) == db.SCHEMA_VERSION


@st.cache_data(show_spinner=False)
def _arm_overview(path: str, version: tuple[float, int]) -> pd.DataFrame:
    with db.connect_read_only(Path(path)) as con:
        summary = db.arm_summary(con)
        metrics = db.read_metrics(con)
    wide = metrics.pivot_table(index="arm", columns="metric", values="value", aggfunc="first")
    keep = [m for m in ("l0", "explained_variance", "ce_loss_recovered", "n_tokens") if m in wide.columns]
    return summary.merge(wide[keep].reset_index(), on="arm", how="left")


def arm_overview(config: StudyConfig) -> pd.DataFrame:
    """Per arm: features, medical candidates, coherence mean / median, dead features, L0, EV, CE recovered."""
    return _arm_overview(config.features_db, features_db_version(config))


def perplexity_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per (arm, held-out text): columns arm, text, perplexity."""
    rows = [{"arm": arm, "text": split, "perplexity": value}
            for arm, splits in report["perplexity"].items() for split, value in splits.items()]
    return pd.DataFrame(rows)


def sae_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per arm: hook, width and reconstruction quality on held-out text."""
    rows = [{"arm": arm, "hook_name": sae["hook_name"], "d_in": sae["d_in"], "d_sae": sae["d_sae"],
             "L0": sae["l0"], "explained variance": sae["explained_variance"], "MSE": sae["mse"],
             "dead features": sae["dead_fraction"], "tokens": sae["n_tokens"]}
            for arm, sae in report["saes"].items()]
    return pd.DataFrame(rows)


__all__ = ["StudyInputError", "arm_overview", "build_report", "config_path", "features_db_current",
           "features_db_exists", "features_db_version", "perplexity_frame", "sae_frame", "study_config"]
