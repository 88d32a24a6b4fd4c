"""The study the dashboard shows: its config (cached until the file changes), its build report and where its
features database is. No reads of the database here (dashboard.reads); no widgets."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import streamlit as st

from core.config import StudyConfig, load_config
from core.errors import StudyInputError

DEFAULT_CONFIG = "configs/demo.toml"


def config_path() -> str:
    """`--config` after `streamlit run dashboard/app.py --`, else $SAE_DIFF_CONFIG, else the demo."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=os.environ.get("SAE_DIFF_CONFIG", DEFAULT_CONFIG))
    return parser.parse_known_args(sys.argv[1:])[0].config


def mtime(path: Path) -> float:
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
    return _load_config(path, mtime(Path(path)))


@st.cache_data(show_spinner=False)
def _read_json(path: str, mtime: float) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def study_has_pair() -> bool:
    """Whether the study declares a pair (its first page is then What changed); False when the config is unreadable,
    which the Overview reports."""
    try:
        return bool(study_config().pairs)
    except StudyInputError:
        return False


def build_report(config: StudyConfig) -> dict[str, Any] | None:
    """The demo build's manifest.json (beside the features database), or None for a study without one."""
    path = config.output_dir / "manifest.json"
    return _read_json(str(path), mtime(path))


def features_db_exists(config: StudyConfig) -> bool:
    return Path(config.features_db).is_file()


def features_db_version(config: StudyConfig) -> tuple[float, int]:
    """Changes whenever a new database is published (a rename gives a new inode): the key of cached reads."""
    try:
        stat = Path(config.features_db).stat()
    except OSError:
        return (0.0, 0)
    return (stat.st_mtime, stat.st_ino)
