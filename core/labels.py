"""Human labels of features: their own DuckDB file, never the features database, so no precompute touches them.

A label is keyed by study, arm, feature and the SAE's decoder fingerprint (`core.loading.decoder_fingerprint`):
when the SAE behind an arm changes, its old labels stay in the file but belong to another fingerprint, so they
are shown as such and never attached to different features. Labels are an append-only log of events, each
carrying its annotator (`author`); undo deletes one event (that annotator's previous label shows again).

A team labels together: every annotator has one current label per feature (their latest event), and an event
marked `adjudicated` settles a feature they disagree on. `current_labels` gives one label per feature by the
consensus rule of `core.agreement` (adjudicated, else the majority of annotators); `annotator_labels` gives
every annotator's. Events saved before annotators existed (no author) read as "(anonymous)", one annotator.

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

from core import agreement
from core.errors import StudyInputError

LABELS = ("medical", "not_medical", "unsure")
ANONYMOUS = "(anonymous)"  # the annotator of an event saved without one (files from before annotators)
MAX_ANNOTATOR_CHARS = 60
SCHEMA = [
    "CREATE SEQUENCE IF NOT EXISTS label_event_id",
    """CREATE TABLE IF NOT EXISTS label_events (id BIGINT PRIMARY KEY DEFAULT nextval('label_event_id'),
        study VARCHAR NOT NULL, arm VARCHAR NOT NULL, feature INTEGER NOT NULL, sae_fingerprint VARCHAR NOT NULL,
        label VARCHAR NOT NULL, note VARCHAR, author VARCHAR, labelled_at TIMESTAMP DEFAULT current_timestamp)""",
    # Files written before adjudication gain the column in place on first open; their events are not adjudications.
    "ALTER TABLE label_events ADD COLUMN IF NOT EXISTS adjudicated BOOLEAN DEFAULT FALSE",
]
# An old event's empty or missing author reads as ANONYMOUS; the stored value is left as it was.
_EVENTS = f"""
    SELECT study, arm, feature, sae_fingerprint, label, note,
           coalesce(nullif(trim(author), ''), '{ANONYMOUS}') AS author, labelled_at, id,
           coalesce(adjudicated, FALSE) AS adjudicated
    FROM label_events"""
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


def check_annotator(name: str | None) -> str:
    """The annotator's name, stripped; StudyInputError with one line for an empty or overlong name."""
    name = (name or "").strip()
    if not name:
        raise StudyInputError("the annotator name is empty: labels carry who made them, so give your name first")
    if len(name) > MAX_ANNOTATOR_CHARS:
        raise StudyInputError(f"the annotator name is {len(name)} characters long; keep it under "
                              f"{MAX_ANNOTATOR_CHARS + 1} (a name or initials)")
    return name


def save_label(path: Path, study: str, arm: str, feature: int, sae_fingerprint: str, label: str,
               note: str = "", author: str = "", adjudicated: bool = False) -> int:
    """Append a label event by `author` and return its id (for undo); `adjudicated`: it settles the feature for the
    team. Raises ValueError for an unknown label, saving nothing. An empty author reads as ANONYMOUS (scripts and
    files from before annotators); the dashboard asks for a name first (`check_annotator`), as must an adjudication."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    author = check_annotator(author) if author.strip() or adjudicated else ""
    try:
        with _connect(path, write=True) as con:
            row = con.execute(
                "INSERT INTO label_events (study, arm, feature, sae_fingerprint, label, note, author, adjudicated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [study, arm, int(feature), sae_fingerprint, label, note, author, bool(adjudicated)]).fetchone()
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


# Each annotator's latest label of a feature; adjudications apart (the latest settles the feature).
_LATEST = """
    SELECT * EXCLUDE (adjudicated) FROM ({events}) WHERE study = ? AND adjudicated = {adjudicated}
    QUALIFY row_number() OVER (PARTITION BY arm, feature, sae_fingerprint{by_author} ORDER BY id DESC) = 1
    ORDER BY arm, feature, author"""


def _latest_sql(adjudicated: bool) -> str:
    return _LATEST.format(events=_EVENTS, adjudicated=str(adjudicated).upper(),
                          by_author="" if adjudicated else ", author")


def annotator_labels(path: Path, study: str) -> pd.DataFrame:
    """Every annotator's current label of every feature of a study (one row per annotator per (arm, feature,
    sae_fingerprint)): study, arm, feature, sae_fingerprint, label, note, author, labelled_at, id."""
    with _connect(path, write=False) as con:
        return con.execute(_latest_sql(adjudicated=False), [study]).df()


def adjudications(path: Path, study: str) -> pd.DataFrame:
    """The latest adjudication of each adjudicated feature (the same columns; author: who adjudicated)."""
    with _connect(path, write=False) as con:
        return con.execute(_latest_sql(adjudicated=True), [study]).df()


def current_labels(path: Path, study: str) -> pd.DataFrame:
    """One label per (arm, feature, sae_fingerprint) of a study, all fingerprints included, by the team's
    consensus (`core.agreement.CONSENSUS_RULE`): study, arm, feature, sae_fingerprint, label, note, author (who
    backs the label), labelled_at, id (its latest event), rule, annotators, votes."""
    sql = (f"WITH votes AS ({_latest_sql(False)}), adjudications AS ({_latest_sql(True)}) "
           f"SELECT ? AS study, * FROM ({agreement.CONSENSUS_SQL})")
    with _connect(path, write=False) as con:
        return con.execute(sql, [study, study, study]).df()


def split_by_sae(labels: pd.DataFrame, fingerprints: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of the arms' current SAEs, rows of other SAEs) of any labels frame with arm and sae_fingerprint."""
    current = labels["sae_fingerprint"].to_numpy() == labels["arm"].map(fingerprints).to_numpy()
    return labels[current].reset_index(drop=True), labels[~current].reset_index(drop=True)


def labels_for(path: Path, study: str, fingerprints: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labels of the arms' current SAEs, labels of other SAEs) — the second are shown apart, never attached."""
    return split_by_sae(current_labels(path, study), fingerprints)


def history(path: Path, study: str) -> pd.DataFrame:
    """Every label event of a study, oldest first, with its annotator and whether it adjudicates (the export)."""
    with _connect(path, write=False) as con:
        return con.execute(f"SELECT * FROM ({_EVENTS}) WHERE study = ? ORDER BY id", [study]).df()
