"""Human labels of features: their own DuckDB file, never the features database, so no precompute touches them.

A label is keyed by study, arm, feature and the SAE's decoder fingerprint (`core.loading.decoder_fingerprint`):
when the SAE behind an arm changes, its old labels stay in the file but belong to another fingerprint, so they
are shown as such and never attached to different features. Labels are an append-only log of events; the
current label of a feature is its latest event, and undo deletes one event (the previous label shows again).

Thread safety: Streamlit runs each browser session in its own thread and a DuckDB connection is not
thread-safe, so every operation opens its own short connection under one process-wide lock. Writes are one
transaction each; a failed write raises `LabelWriteError` with the reason, and nothing is half-written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd

LABELS = ("medical", "not_medical", "unsure")
SCHEMA = [
    "CREATE SEQUENCE IF NOT EXISTS label_event_id",
    """CREATE TABLE IF NOT EXISTS label_events (id BIGINT PRIMARY KEY DEFAULT nextval('label_event_id'),
        study VARCHAR NOT NULL, arm VARCHAR NOT NULL, feature INTEGER NOT NULL, sae_fingerprint VARCHAR NOT NULL,
        label VARCHAR NOT NULL, note VARCHAR, author VARCHAR, labelled_at TIMESTAMP DEFAULT current_timestamp)""",
]
_LOCK = threading.Lock()


class LabelWriteError(RuntimeError):
    """A label could not be saved; the message says why (the caller keeps the user's input)."""


@contextmanager
def side_database(path: Path, write: bool, schema: Sequence[str]) -> Iterator[duckdb.DuckDBPyConnection]:
    """A small DuckDB file of human or LLM work beside the features database (labels, explanations), its tables
    created on open: one lock in the process for all of them, and a retry while another process holds the file."""
    path = Path(path)
    with _LOCK:
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Nothing written yet: read from an empty in-memory database rather than create the file.
        con = _open_with_retry(str(path)) if write or path.exists() else duckdb.connect()
        try:
            for statement in schema:
                con.execute(statement)
            yield con
        finally:
            con.close()


def _connect(path: Path, write: bool):
    return side_database(path, write, SCHEMA)


def _open_with_retry(path: str, attempts: int = 20) -> duckdb.DuckDBPyConnection:
    """Another process (a second dashboard) may hold the file for a few milliseconds: wait for it, ~2 s at most."""
    for attempt in range(attempts):
        try:
            return duckdb.connect(path)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def save_label(path: Path, study: str, arm: str, feature: int, sae_fingerprint: str, label: str,
               note: str = "", author: str = "") -> int:
    """Append a label event and return its id (for undo). Raises ValueError for an unknown label."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    try:
        with _connect(path, write=True) as con:
            row = con.execute(
                "INSERT INTO label_events (study, arm, feature, sae_fingerprint, label, note, author) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [study, arm, int(feature), sae_fingerprint, label, note, author]).fetchone()
            return int(row[0])
    except (duckdb.Error, OSError) as err:
        raise LabelWriteError(f"could not save the label to {path}: {err}") from err


def undo(path: Path, event_id: int) -> bool:
    """Delete one label event (the feature's previous label, if any, is current again). False if it was gone."""
    try:
        with _connect(path, write=True) as con:
            return con.execute("DELETE FROM label_events WHERE id = ? RETURNING id", [event_id]).fetchone() is not None
    except (duckdb.Error, OSError) as err:
        raise LabelWriteError(f"could not undo in {path}: {err}") from err


_CURRENT = """
    SELECT study, arm, feature, sae_fingerprint, label, note, author, labelled_at, id
    FROM label_events
    QUALIFY row_number() OVER (PARTITION BY study, arm, feature, sae_fingerprint ORDER BY id DESC) = 1"""


def current_labels(path: Path, study: str) -> pd.DataFrame:
    """The latest label of every (arm, feature, sae_fingerprint) of a study, all fingerprints included."""
    with _connect(path, write=False) as con:
        return con.execute(f"SELECT * FROM ({_CURRENT}) WHERE study = ? ORDER BY arm, feature", [study]).df()


def labels_for(path: Path, study: str, fingerprints: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labels of the arms' current SAEs, labels of other SAEs) — the second are shown apart, never attached."""
    labels = current_labels(path, study)
    current = labels["sae_fingerprint"].to_numpy() == labels["arm"].map(fingerprints).to_numpy()
    return labels[current].reset_index(drop=True), labels[~current].reset_index(drop=True)


def history(path: Path, study: str) -> pd.DataFrame:
    """Every label event of a study, oldest first (the export)."""
    with _connect(path, write=False) as con:
        return con.execute("SELECT * FROM label_events WHERE study = ? ORDER BY id", [study]).df()
