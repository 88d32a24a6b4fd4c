"""The features database, read-only: one connection per published file, one cursor per read, and `study_read`,
which turns a read of core.database (`fn(con, *args) -> R`) into the page's cached `fn(*args) -> R`.

A read is cached until a new database is published (the key includes the file's version). `columns` declares the
columns of the frame it returns: a read that returns a frame without one of them fails on its first call (the page
tests open every page), so the declaration beside the read is one pages can rely on."""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import duckdb
import pandas as pd
import streamlit as st

from core import database as db
from core.config import StudyConfig
from dashboard.study import features_db_version, study_config

P = ParamSpec("P")
R = TypeVar("R")
Connection = duckdb.DuckDBPyConnection


class _Connections:
    """One read-only connection per database path, replaced when a new file is published.

    DuckDB keeps one database instance per path in a process: while a connection to the old file is open, a new
    connect() to the same path would return the old file's content. So the old one is closed first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, tuple[tuple[float, int], Connection]] = {}

    def get(self, path: str, version: tuple[float, int]) -> Connection:
        with self._lock:
            held = self._open.get(path)
            if held is not None and held[0] == version:
                return held[1]
            if held is not None:
                held[1].close()
            con = db.connect_read_only(Path(path))
            self._open[path] = (version, con)
            return con


@st.cache_resource(show_spinner=False)
def _connections() -> _Connections:
    return _Connections()


def connection(path: str, version: tuple[float, int]) -> Connection:
    return _connections().get(path, version)


def features_db_current(config: StudyConfig) -> bool:
    """The database exists, has this code's schema version and every declared table (a database published before
    a new measurement's stage has not its table: the page shows how to rebuild it)."""
    try:  # through the shared connection: a second connect() to the path could see the previous file
        with connection(config.features_db, features_db_version(config)).cursor() as cursor:
            if db.schema_version(cursor) != db.SCHEMA_VERSION:
                return False
            tables = {row[0] for row in cursor.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            return set(db.schema.TABLES) <= tables
    except duckdb.Error:
        return False


class MissingColumns(AssertionError):
    """A read returned a frame without a column it declares."""


def _check_columns(name: str, result: Any, columns: tuple[str, ...]) -> None:
    frame = result[0] if isinstance(result, tuple) and result and isinstance(result[0], pd.DataFrame) else result
    if isinstance(frame, pd.DataFrame):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise MissingColumns(f"read {name} declares columns {missing} its frame lacks ({list(frame.columns)})")


_RAISE = object()
_READS = itertools.count()


def study_read(fn: Callable[Concatenate[Connection, P], R], columns: tuple[str, ...] | None = None,
               missing: Any = _RAISE, max_entries: int = 256) -> Callable[P, R]:
    """`fn` on this study's database, without its connection argument, cached until a new database is published.

    columns: the columns of the frame it returns (checked when the cache fills). missing: what it returns on a
    database built without the stage that writes its table (default: the error propagates)."""
    name = f"{fn.__module__}.{fn.__qualname__}"

    def run(path: str, version: tuple[float, int], *args: Any, **kwargs: Any) -> Any:
        # A DuckDB connection is not thread-safe; a cursor is a connection of its own on the same database.
        with connection(path, version).cursor() as cursor:
            try:
                result = fn(cursor, *args, **kwargs)
            except duckdb.CatalogException:
                if missing is _RAISE:
                    raise
                return missing
        if columns is not None:
            _check_columns(name, result, columns)
        return result

    # st.cache_data keys a function by module, qualified name and source: one `run` per read, so name each apart
    # (two reads of one core function, with other columns or another `missing`, keep caches of their own)
    run.__module__, run.__qualname__ = fn.__module__, f"study_read.{fn.__qualname__}.{next(_READS)}"
    cached = st.cache_data(show_spinner=False, max_entries=max_entries)(run)

    @functools.wraps(fn)
    def read(*args: P.args, **kwargs: P.kwargs) -> R:
        config = study_config()
        return cached(config.features_db, features_db_version(config), *args, **kwargs)

    signature = inspect.signature(fn)
    without_con = signature.replace(parameters=list(signature.parameters.values())[1:])
    read.__signature__ = without_con  # type: ignore[attr-defined]
    read.columns = columns  # type: ignore[attr-defined]
    return read
