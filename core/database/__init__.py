"""The features database: its schema, every SQL statement (always with `?` parameters), and atomic publishing.

This package holds every SQL statement of the features database: the schema, the precompute's writes and
publishing here, the dashboard's reads in `core.database.queries`.

One DuckDB file per study. The precompute builds into `<features_db>.building` beside the target, one
transaction per finished stage, and renames it over the target only when every stage is done, so a reader
(the dashboard, read-only) always sees a whole database, and a killed run loses only the stage in flight.

Tables (one row per arm × feature where it says feature; names follow SAELens / Neuronpedia):
- study: the config and its hash, package versions, schema version, histogram edges (one row)
- stages: per arm (or pair of arms: arm_a, arm_b) and stage, the key of the inputs it was computed from (same
  key → skipped on re-run) and the token set it measured on (NULL for stages that read no tokens)
- pairs: the pairs of arms the study compares (arm_a, arm_b), in the config's order
- token_sets: per token set ("corpus", "sample-<rows>") and corpus source (file), its rows and tokens (BOS left
  out): every number measured on tokens names one of these
- arms: model, SAE source, hook_name, d_in, d_sae, d_vocab, weight fingerprints
- top_tokens: decoder projection, kind 'top' | 'bottom', rank 0 = strongest
- feature_words: coherence, n_valid, med_matches, is_candidate, matched_words, and the top tokens as text
  (top_text) and as normalised words (top_words) so the dashboard filters without scanning top_tokens
- feature_activations: n_fired, frac_nonzero, max_act, mean_act / var_act (of non-zero activations), LLR
- histograms, contexts ('top' by activation, 'interval' samples), unigram, metrics (arm or arm_a, arm_b; stage,
  metric, value)
- contexts of kind 'interval' are firing tokens sampled per activation interval: max_act is that token's own
  activation and max_pos / max_index its place (sae_vis's samples), not the row's maximum
- fired_tokens: per feature, the token ids it fires on most (rank 0 = most firings), count and summed activation
- cross-arm, keyed by the pair's two arms `arm_a`, `arm_b`: similarity_hist, similarity_by_position, transfer_metrics,
  transfer_densities, feature_matches (best match, correlation, status persist / emerge / disappear / dead /
  rare, partner count, one-to-one partner), match_pairs (every pair at or above the threshold)
- feature_neighbours (per arm) and cross_neighbours (per pair): each feature's nearest features by decoder
  cosine in its own SAE and in the other arm's, rank 0 = nearest; feature_map: one UMAP layout (x, y) of both
  arms' decoder directions together
- features: a view joining feature_words, feature_activations and feature_matches (the arm's first pair's), one
  row per arm and feature
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from core.database.schema import ARM_TABLES, PAIR_ROW_TABLES, SCHEMA, TABLES
from core.errors import StudyInputError

SCHEMA_VERSION = 14  # 2: activation sums in the view; 3: top_text, top_words; 4: model diff; 5: steering tables;
# 6: token sets (token_sets, stages.token_set), dead / rare statuses, match_pairs, partner counts, assignment;
#    fired_tokens, interval samples per firing token; 7: pair tables name arm_a, arm_b (no `pair` label column);
# 8: steering records its measure (steer_features.measure) and perplexities (mean_*_perplexity, *_perplexity)
# 9: divergence_rows, divergence_contexts, divergence_features (where the pair's predictions part)
# 10: any number of pairs: table pairs, stages / metrics name a pair by arm_a, arm_b (no "a|b"), the view one row
#     per feature (its arm's first pair's fate)
# 11: feature_neighbours, cross_neighbours (nearest features by decoder cosine), feature_map (UMAP x, y)
# 12: feature_words.fired_med_matches, fired_matched_words, candidate_by (candidates by firing tokens too)
# 13: feature_matches.same_index_corr, same_index_cos (feature i against the other arm's feature i)
# 14: which differences are real (issue 22): pairs.control, pairs.controls (a pair's control pair)
BUILDING_SUFFIX = ".building"

def building_path(target: Path) -> Path:
    return target.with_name(target.name + BUILDING_SUFFIX)


def open_build(target: Path, fresh: bool = False) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A writable connection to the build file beside `target`, and where its content came from:
    "resumed" (an unfinished build), "copied" (the published database, whose finished stages are reused)
    or "new". `fresh` starts from an empty file; a build of another schema version is discarded."""
    target = Path(target)
    build = building_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        discard_build(target)
    origin = "resumed" if build.exists() else "new"
    if origin == "new" and target.exists() and not fresh and file_schema_version(target) == SCHEMA_VERSION:
        shutil.copyfile(target, build)
        origin = "copied"
    con = _connect_writable(build)
    if schema_version(con) not in (None, SCHEMA_VERSION):
        con.close()
        discard_build(target)
        con, origin = _connect_writable(build), "new"
    for statement in SCHEMA:
        con.execute(statement)
    return con, origin


def _connect_writable(path: Path) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path))
    except duckdb.IOException as err:
        if "lock" in str(err).lower():
            raise StudyInputError(f"{path} is locked: another precompute is building this study; wait for it "
                                  "or stop it") from err
        raise


def discard_build(target: Path) -> None:
    """Delete the unfinished build beside `target` (and its write-ahead log), if any."""
    build = building_path(Path(target))
    for path in (build, build.with_name(build.name + ".wal")):
        path.unlink(missing_ok=True)


def publish(con: duckdb.DuckDBPyConnection, target: Path) -> None:
    """Checkpoint and close the build, then rename it over `target` (atomic on one filesystem).

    Readers that hold the old file keep reading it (POSIX rename) and see the new one when they reopen."""
    target = Path(target)
    con.execute("CHECKPOINT")
    con.close()
    build = building_path(target)
    os.replace(build, target)
    build.with_name(build.name + ".wal").unlink(missing_ok=True)


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version recorded in an open database, or None when it has no study row."""
    exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", ["study"]).fetchall()
    if not exists[0][0]:
        return None
    rows = con.execute("SELECT schema_version FROM study").fetchall()
    return rows[0][0] if rows else None


def file_schema_version(path: Path) -> int | None:
    """The schema version of a database file, or None when it is not one of ours (or unreadable)."""
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            return schema_version(con)
    except duckdb.Error:
        return None


def connect_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), read_only=True)


# --- writes -------------------------------------------------------------------------------------------------

def write_study(con: duckdb.DuckDBPyConnection, name: str, description: str, config_json: str, config_hash: str,
                versions_json: str, hist_edges: list[float], interval_edges: list[float]) -> None:
    with _transaction(con):
        con.execute("DELETE FROM study")
        con.execute("INSERT INTO study VALUES (?, ?, ?, ?, ?, ?, ?, ?, now())",
                    [name, description, config_json, config_hash, versions_json, SCHEMA_VERSION, hist_edges,
                     interval_edges])


def drop_arms_except(con: duckdb.DuckDBPyConnection, arms: list[str], pairs: list[tuple[str, str]]) -> int:
    """Remove every row of arms and arm pairs that are no longer in the study; returns how many rows went."""
    removed = 0
    with _transaction(con):
        for table in ARM_TABLES:  # a pair's rows in stages and metrics have arm NULL: left to the loop below
            removed += con.execute(f"DELETE FROM {table} WHERE NOT list_contains(?, arm)",  # table: a constant
                                   [arms]).fetchone()[0]
        for table in PAIR_ROW_TABLES:
            removed += con.execute(f"DELETE FROM {table} WHERE arm_a IS NOT NULL "
                                   "AND NOT list_contains(?, [arm_a, arm_b])", [[list(pair) for pair in pairs]]).fetchone()[0]
    return removed


def write_pairs(con: duckdb.DuckDBPyConnection, pairs: list[tuple[str, ...]]) -> bool:
    """Replace the table of the study's pairs with these rows (arm_a, arm_b[, control, controls]), in the config's
    order (declared pairs, then the control pairs derived from them); True when that changed it."""
    rows = [(*pair, None, None)[:4] for pair in pairs]
    if con.execute("SELECT arm_a, arm_b, control, controls FROM pairs ORDER BY position").fetchall() == rows:
        return False
    with _transaction(con):
        con.execute("DELETE FROM pairs")
        if rows:
            con.executemany("INSERT INTO pairs VALUES (?, ?, ?, ?, ?)",
                            [[a, b, i, control, controls] for i, (a, b, control, controls) in enumerate(rows)])
    return True


def _owner(arm: str | tuple[str, str]) -> list[str | None]:
    """The arm, arm_a, arm_b columns of a stage's rows in stages and metrics: an arm's, or a pair's."""
    return [None, *arm] if isinstance(arm, tuple) else [arm, None, None]


# Matches the stages / metrics rows of one owner (_owner's three values): a constant.
_OWNED_BY = "arm IS NOT DISTINCT FROM ? AND arm_a IS NOT DISTINCT FROM ? AND arm_b IS NOT DISTINCT FROM ?"


def write_arm(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> None:
    _insert_frame(con, "arms", pd.DataFrame([row]), delete=("DELETE FROM arms WHERE arm = ?", [row["arm"]]))


def stage_key(con: duckdb.DuckDBPyConnection, arm: str | tuple[str, str], stage: str) -> str | None:
    """The key a stage of one arm (or of a pair (arm_a, arm_b)) was last computed with, or None."""
    row = con.execute(f"SELECT stage_key FROM stages WHERE {_OWNED_BY} AND stage = ?", [*_owner(arm), stage]).fetchone()
    return None if row is None else row[0]


def write_stage(con: duckdb.DuckDBPyConnection, arm: str | tuple[str, str], stage: str, key: str, seconds: float,
                tables: dict[str, pa.Table | pd.DataFrame], metrics: dict[str, float] | None = None,
                note: str | None = None, token_set: str | None = None, owns: tuple[str, ...] | None = None) -> None:
    """Replace one stage's rows for one arm (or, for a pair stage, one pair (arm_a, arm_b)) and mark it
    finished, in one transaction (all or nothing). `owns`: every table the stage writes (cleared even when a run writes
    none of them, as a skipped cross stage does; default: the tables given). `token_set`: the name (in
    token_sets) of the tokens it measured on."""
    owns = tuple(tables) if owns is None else owns
    unknown = (set(tables) - set(owns)) | (set(owns) - set(TABLES))
    if unknown:
        raise ValueError(f"stage {stage} does not own tables {sorted(unknown)}")
    names = list(arm) if isinstance(arm, tuple) else [arm]
    owner = _owner(arm)
    with _transaction(con):
        for table in owns:
            columns = TABLES[table].key_columns
            if len(columns) != len(names):
                raise ValueError(f"table {table} is keyed by {columns}, not by {names}")
            where = " AND ".join(f"{column} = ?" for column in columns)  # table, columns: schema constants
            con.execute(f"DELETE FROM {table} WHERE {where}", names)
        con.execute(f"DELETE FROM metrics WHERE {_OWNED_BY} AND stage = ?", [*owner, stage])
        con.execute(f"DELETE FROM stages WHERE {_OWNED_BY} AND stage = ?", [*owner, stage])
        for table, frame in tables.items():
            _insert_frame(con, table, frame)
        if metrics:
            con.executemany("INSERT INTO metrics (arm, arm_a, arm_b, stage, metric, value) VALUES (?, ?, ?, ?, ?, ?)",
                            [[*owner, stage, name, float(value)] for name, value in metrics.items()])
        con.execute("INSERT INTO stages (arm, arm_a, arm_b, stage, stage_key, seconds, finished_at, note, token_set) "
                    "VALUES (?, ?, ?, ?, ?, ?, now(), ?, ?)",
                    [*owner, stage, key, seconds, note, token_set])


def write_token_sets(con: duckdb.DuckDBPyConnection, token_sets: list[Any]) -> None:
    """Replace the token_sets table with these `core.corpus.TokenSet`s (the ones this run's stages read)."""
    rows = {(ts.name, source): [ts.name, source, position, n_rows, n_rows * (ts.context_size - 1)]
            for ts in token_sets for position, (source, n_rows) in enumerate(ts.sources)}
    with _transaction(con):
        con.execute("DELETE FROM token_sets")
        if rows:
            con.executemany("INSERT INTO token_sets VALUES (?, ?, ?, ?, ?)", list(rows.values()))


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


def _insert_frame(con: Any, table: str, frame: pa.Table | pd.DataFrame, delete: tuple | None = None) -> None:
    if delete is not None:
        con.execute(*delete)
    con.register("incoming", frame)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")  # table: a schema constant
    finally:
        con.unregister("incoming")


# --- reads --------------------------------------------------------------------------------------------------

def read_top_tokens(con: duckdb.DuckDBPyConnection, arm: str, kind: str = "top") -> pd.DataFrame:
    """feature, rank, token_id, value of one arm's top (or bottom) tokens, ordered by feature then rank."""
    return con.execute("SELECT feature, rank, token_id, value FROM top_tokens WHERE arm = ? AND kind = ? "
                       "ORDER BY feature, rank", [arm, kind]).df()


def read_metrics(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every metric: arm (NULL for a pair stage's), arm_a, arm_b (a pair stage's), stage, metric, value."""
    return con.execute("SELECT arm, arm_a, arm_b, stage, metric, value FROM metrics "
                       "ORDER BY arm, arm_a, arm_b, stage, metric").df()


from core.database import queries  # noqa: E402,F401  (the dashboard's reads)
from core.database import pair_queries  # noqa: E402,F401  (one pair's reads)
from core.database import changed_queries, diff_queries, metrics, neighbour_queries  # noqa: E402,F401
