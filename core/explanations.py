"""Explanations of features: their own DuckDB file beside the labels, never the features database, so no
precompute run touches them.

Keyed like labels (core.labels) by study, arm, feature and the SAE's decoder fingerprint: an explanation of a
replaced SAE stays in the file but is never attached to the new SAE's features. Each row also names the
explainer (backend and model), the prompt version and the scores. A feature's shown explanation is its latest
one for the current fingerprint. `explain` commits each explanation as it lands (one short transaction), so an
interrupted run keeps what it finished and a re-run skips (arm, feature, fingerprint, explainer, version)
already there. Connections are short and opened under core.labels' process-wide lock, with its retry when
another process holds the file.

The same file keeps LLM summaries of a pair (the What changed page, core.explain.summary): keyed by study, the pair
and both SAEs' decoder fingerprints, with a hash of the facts they were written from; one of replaced SAEs is kept
and never shown as current.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from core.labels import side_database

SCHEMA = [
    "CREATE SEQUENCE IF NOT EXISTS explanation_id",
    """CREATE TABLE IF NOT EXISTS explanations (id BIGINT PRIMARY KEY DEFAULT nextval('explanation_id'),
        study VARCHAR NOT NULL, arm VARCHAR NOT NULL, feature INTEGER NOT NULL, sae_fingerprint VARCHAR NOT NULL,
        explanation VARCHAR NOT NULL, explainer VARCHAR NOT NULL, prompt_version INTEGER NOT NULL,
        simulation DOUBLE, detection DOUBLE, n_tokens INTEGER, n_activating INTEGER, n_non_activating INTEGER,
        created_at TIMESTAMP DEFAULT current_timestamp)""",
    "CREATE SEQUENCE IF NOT EXISTS pair_summary_id",
    """CREATE TABLE IF NOT EXISTS pair_summaries (id BIGINT PRIMARY KEY DEFAULT nextval('pair_summary_id'),
        study VARCHAR NOT NULL, arm_a VARCHAR NOT NULL, arm_b VARCHAR NOT NULL, fingerprint_a VARCHAR NOT NULL,
        fingerprint_b VARCHAR NOT NULL, facts_hash VARCHAR NOT NULL, explainer VARCHAR NOT NULL,
        prompt_version INTEGER NOT NULL, summary VARCHAR NOT NULL, created_at TIMESTAMP DEFAULT current_timestamp)""",
]


class ExplanationWriteError(RuntimeError):
    """An explanation could not be saved; the message says why."""


@dataclass(frozen=True)
class Explanation:
    arm: str
    feature: int
    sae_fingerprint: str
    explanation: str
    explainer: str  # "backend:model", e.g. "local:SmolLM2-135M-Instruct.Q4_1.gguf"
    prompt_version: int
    simulation: float | None = None  # Pearson r (core.explain.scoring)
    detection: float | None = None  # balanced accuracy
    n_tokens: int = 0
    n_activating: int = 0
    n_non_activating: int = 0


def _connect(path: Path, write: bool):
    return side_database(path, write, SCHEMA)


def _number(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def save_explanation(path: Path, study: str, item: Explanation) -> int:
    """Append one explanation (one transaction) and return its id."""
    try:
        with _connect(path, write=True) as con:
            row = con.execute(
                "INSERT INTO explanations (study, arm, feature, sae_fingerprint, explanation, explainer, "
                "prompt_version, simulation, detection, n_tokens, n_activating, n_non_activating) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [study, item.arm, int(item.feature), item.sae_fingerprint, item.explanation, item.explainer,
                 item.prompt_version, _number(item.simulation), _number(item.detection), item.n_tokens,
                 item.n_activating, item.n_non_activating]).fetchone()
            return int(row[0])
    except (duckdb.Error, OSError) as err:
        raise ExplanationWriteError(f"could not save the explanation to {path}: {err}") from err


def explained_features(path: Path, study: str, arm: str, sae_fingerprint: str, explainer: str,
                       prompt_version: int) -> set[int]:
    """Features of `arm` already explained by this explainer and prompt version for this SAE (a re-run skips)."""
    with _connect(path, write=False) as con:
        rows = con.execute("SELECT DISTINCT feature FROM explanations WHERE study = ? AND arm = ? AND "
                           "sae_fingerprint = ? AND explainer = ? AND prompt_version = ?",
                           [study, arm, sae_fingerprint, explainer, prompt_version]).fetchall()
    return {int(r[0]) for r in rows}


def current_explanations(path: Path, study: str, fingerprints: dict[str, str]) -> pd.DataFrame:
    """The latest explanation of every feature of the arms' current SAEs (arm -> decoder fingerprint); those of
    any other fingerprint are left out. Columns: arm, feature, explanation, explainer, prompt_version,
    simulation, detection, n_tokens, n_activating, n_non_activating, created_at."""
    current = pd.DataFrame({"arm": list(fingerprints), "sae_fingerprint": list(fingerprints.values())})
    with _connect(path, write=False) as con:
        con.register("current_saes", current)
        return con.execute("""
            SELECT e.arm, e.feature, e.explanation, e.explainer, e.prompt_version, e.simulation, e.detection,
                   e.n_tokens, e.n_activating, e.n_non_activating, e.created_at
            FROM explanations e JOIN current_saes c USING (arm, sae_fingerprint)
            WHERE e.study = ?
            QUALIFY row_number() OVER (PARTITION BY e.arm, e.feature ORDER BY e.id DESC) = 1
            ORDER BY e.arm, e.feature""", [study]).df()


def other_sae_count(path: Path, study: str, fingerprints: dict[str, str]) -> int:
    """How many stored explanations belong to an SAE no arm has now (kept, never shown on features)."""
    with _connect(path, write=False) as con:
        rows = con.execute("SELECT arm, sae_fingerprint FROM explanations WHERE study = ?", [study]).fetchall()
    return sum(1 for arm, fingerprint in rows if fingerprints.get(arm) != fingerprint)


@dataclass(frozen=True)
class PairSummary:
    """An LLM summary of pair (arm_a, arm_b), written from the facts whose hash it keeps (core.explain.summary)."""

    arm_a: str
    arm_b: str
    fingerprint_a: str  # decoder fingerprints of the two SAEs it was written about
    fingerprint_b: str
    facts_hash: str
    explainer: str
    prompt_version: int
    summary: str
    created_at: datetime | None = None


def save_pair_summary(path: Path, study: str, item: PairSummary) -> int:
    """Append one pair summary (one transaction) and return its id."""
    try:
        with _connect(path, write=True) as con:
            row = con.execute(
                "INSERT INTO pair_summaries (study, arm_a, arm_b, fingerprint_a, fingerprint_b, facts_hash, explainer, "
                "prompt_version, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [study, item.arm_a, item.arm_b, item.fingerprint_a, item.fingerprint_b, item.facts_hash,
                 item.explainer, item.prompt_version, item.summary]).fetchone()
            return int(row[0])
    except (duckdb.Error, OSError) as err:
        raise ExplanationWriteError(f"could not save the summary to {path}: {err}") from err


def current_pair_summary(path: Path, study: str, pair: tuple[str, str],
                         fingerprints: dict[str, str]) -> PairSummary | None:
    """The latest summary of `pair` written about the arms' current SAEs (arm -> decoder fingerprint), or None."""
    arm_a, arm_b = pair
    if arm_a not in fingerprints or arm_b not in fingerprints:
        return None
    with _connect(path, write=False) as con:
        row = con.execute(
            "SELECT arm_a, arm_b, fingerprint_a, fingerprint_b, facts_hash, explainer, prompt_version, summary, "
            "created_at FROM pair_summaries WHERE study = ? AND arm_a = ? AND arm_b = ? AND fingerprint_a = ? AND "
            "fingerprint_b = ? ORDER BY id DESC LIMIT 1",
            [study, arm_a, arm_b, fingerprints[arm_a], fingerprints[arm_b]]).fetchone()
    return None if row is None else PairSummary(*row)
