"""The Ray executor on a local Ray instance (2 CPUs, started here and shut down after) over the two-arm pair
study of tests/pair_study.py (24 corpus rows, batches of 8): it publishes the same database as the local
executor, table by table, arm and pair stages alike, though a worker dies mid-shard in an arm pass and in a
pair pass (Ray restarts it and runs the shard again); a driver killed after two saved shards leaves the
published database untouched, and the next run reuses exactly those two shards."""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from core.config import load_config
from core.database.schema import TABLES
from pair_study import D_SAE, PERMUTATION, build_pair_study
from precompute import stages
from precompute.run import run_study

ray = pytest.importorskip("ray")
from precompute.ray_executor import RayExecutor  # noqa: E402  (needs ray)

ROOT = Path(__file__).resolve().parents[2]
SHARD_ROWS = 8  # 24 rows: three shards per pass, one batch each
# Columns that name paths or times, not results (None: the whole table: stage seconds and finish times).
VARIES = {"stages": None, "study": {"config_json", "config_hash", "updated_at"}}


@pytest.fixture(scope="module")
def ray_instance():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local test instance: no token warning
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def local_study(tmp_path_factory):
    """The pair study, built and published by the local executor (the reference)."""
    return build_pair_study(tmp_path_factory.mktemp("local"), diff_tokens=0)


def study_copy(local_config, folder: Path, extra_activations: str = "") -> Path:
    """The same study writing to `folder`; returns its config file."""
    folder.mkdir(parents=True, exist_ok=True)
    text = Path(local_config.source_path).read_text()
    text = text.replace(local_config.features_db, str(folder / "features.duckdb"))
    text = text.replace(local_config.labels_db, str(folder / "labels.duckdb"))
    text = text.replace("[activations]\n", "[activations]\n" + extra_activations)
    (folder / "study.toml").write_text(text)
    return folder / "study.toml"


def tables_of(path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(path), read_only=True) as con:
        out = {}
        for name in [*TABLES, "metrics", "study", "arms"]:
            if VARIES.get(name, set()) is None:
                continue
            columns = [c for c in con.execute(f"SELECT * FROM {name} LIMIT 0").df().columns
                       if c not in VARIES.get(name, set())]
            out[name] = con.execute(f"SELECT {', '.join(columns)} FROM {name} ORDER BY ALL").fetchall()
        return out


def assert_same_database(path_a, path_b):
    """Every table equal row by row: exactly, except floats to 1e-9 relative (sums merged from shards)."""
    a, b = tables_of(path_a), tables_of(path_b)
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for row_a, row_b in zip(a[name], b[name]):
            for x, y in zip(row_a, row_b):
                if isinstance(x, float) and isinstance(y, float):
                    assert x == pytest.approx(y, rel=1e-9, nan_ok=True), (name, row_a, row_b)
                else:
                    assert x == y, (name, row_a, row_b)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dying_once(shard_fn, marker: Path, started: Path, tag: str):
    """shard_fn, except that the first call on any worker to find `marker` removes it and kills its process
    mid-shard (as a machine would: no cleanup); every call first appends `tag` to `started`. Nested, so Ray
    pickles it by value: the workers run it though they import no test module."""
    def shard(*args):
        with open(started, "a") as log:
            log.write(f"{tag}\n")
        try:
            marker.unlink()
        except FileNotFoundError:
            return shard_fn(*args)
        os._exit(1)
    return shard


@pytest.mark.slow
def test_the_ray_executor_publishes_the_local_executors_database_though_a_worker_dies(
        ray_instance, local_study, tmp_path, monkeypatch):
    config = load_config(str(study_copy(local_study, tmp_path / "ray")))
    started = tmp_path / "started.log"
    activations, transfer = stages.REGISTRY["activations"], stages.REGISTRY["transfer"]
    (tmp_path / "die-in-activations").touch()
    (tmp_path / "die-in-spliced").touch()
    dying_activations = dying_once(activations.sharded.shard, tmp_path / "die-in-activations", started, "activations")
    dying_spliced = dying_once(transfer.passes.passes[1], tmp_path / "die-in-spliced", started, "spliced")
    monkeypatch.setitem(stages.REGISTRY, "activations", dataclasses.replace(
        activations, sharded=dataclasses.replace(activations.sharded, shard=dying_activations)))
    monkeypatch.setitem(stages.REGISTRY, "transfer", dataclasses.replace(
        transfer, passes=dataclasses.replace(transfer.passes, passes=(transfer.passes.passes[0], dying_spliced))))
    executor = RayExecutor(workers=2, shard_rows=SHARD_ROWS)
    report = run_study(config, show_progress=False, executor=executor)
    assert report.published
    # 3 shards a pass: 2 arms' activation passes and the spliced pass, each started once, and one of each again
    assert sorted(started.read_text().split()) == ["activations"] * (2 * 3 + 1) + ["spliced"] * (3 + 1)
    arm_stages = {f"{arm}/{stage}": {"shards": 3, "reused": 0, "run": 3}
                  for arm in ("base", "finetuned") for stage in ("activations", "quality")}
    pair_stages = {f"base→finetuned/{stage}": {"shards": 3 * passes, "reused": 0, "run": 3 * passes}
                   for stage, passes in (("similarity", 1), ("transfer", 2), ("matching", 1))}
    assert report.shards == arm_stages | pair_stages  # transfer: the norm pass, then the spliced pass
    assert not Path(config.features_db + ".shards").exists()  # merged and written: the shards are gone
    assert_same_database(local_study.features_db, config.features_db)
    with duckdb.connect(config.features_db, read_only=True) as con:  # the planted dead features, merged
        dead = con.execute("SELECT count(*) FROM feature_activations WHERE arm = 'base' AND n_fired = 0").fetchone()
        assigned = con.execute("SELECT feature_a, feature_b FROM match_pairs WHERE assigned").fetchall()
    assert dead == (4,)
    live = [(int(PERMUTATION[j]), j) for j in range(D_SAE) if PERMUTATION[j] >= 4]  # A's features 0-3 never fire
    assert sorted(assigned) == sorted(live)  # the pair stages merged from shards find the planted permutation


KILL_AFTER = 2
KILLER = textwrap.dedent(f"""
    import os, signal, sys
    from precompute import shards
    saved, save = [], shards.ShardStore.save
    def save_then_die(self, shard, accumulator):
        save(self, shard, accumulator)
        saved.append(shard)
        if len(saved) == {KILL_AFTER}:
            os.kill(os.getpid(), signal.SIGKILL)  # the driver dies as a machine would: no cleanup
    shards.ShardStore.save = save_then_die
    from precompute.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_killed_driver_leaves_the_published_database_and_the_next_run_reuses_its_shards(
        ray_instance, local_study, tmp_path):
    folder = tmp_path / "killed"
    config_path = study_copy(local_study, folder, extra_activations="top_contexts = 5\n")
    shutil.copyfile(local_study.features_db, folder / "features.duckdb")  # published, now stale for activations
    before = sha256(folder / "features.duckdb")
    command = [sys.executable, "-c", KILLER, "run", "--config", str(config_path), "--no-progress",
               "--executor", "ray", "--ray-address", ray_instance, "--ray-workers", "2",
               "--shard-rows", str(SHARD_ROWS)]
    killed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert sha256(folder / "features.duckdb") == before
    saved = sorted((folder / "features.duckdb.shards").rglob("*.pt"))
    assert len(saved) == KILL_AFTER and all(p.parent.name.startswith("activations-") for p in saved)

    config = load_config(str(config_path))
    report = run_study(config, show_progress=False, executor=RayExecutor(workers=2, shard_rows=SHARD_ROWS))
    assert report.published and sha256(folder / "features.duckdb") != before
    assert report.shards["base/activations"] == {"shards": 3, "reused": KILL_AFTER, "run": 3 - KILL_AFTER}
    assert report.shards["finetuned/activations"] == {"shards": 3, "reused": 0, "run": 3}
    assert "base/quality" not in report.shards  # quality's key does not read top_contexts: up to date
    reference = load_config(str(study_copy(local_study, tmp_path / "local5", extra_activations="top_contexts = 5\n")))
    assert run_study(reference, show_progress=False).published
    assert_same_database(reference.features_db, config.features_db)
    with duckdb.connect(config.features_db, read_only=True) as con:
        most = con.execute("SELECT max(rank) FROM contexts WHERE kind = 'top'").fetchone()[0]
    assert most == 4  # five top contexts per feature, as the changed config asks
