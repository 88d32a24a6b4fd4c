"""The Ray executor on a local Ray instance (2 CPUs, started here and shut down after) over the two-arm pair
study of tests/pair_study.py (24 corpus rows, batches of 8): it publishes the same database as the local
executor, table by table, arm and pair stages alike, though a worker dies mid-shard in an arm pass and in a
pair pass (Ray restarts it and runs the shard again); a driver killed mid-run (in an arm pass, then in a pair
stage's second pass) leaves the published database untouched, and the next run reuses exactly the shards saved."""

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


def study_copy(local_config, folder: Path, changes: dict[str, str] | None = None) -> Path:
    """The same study writing to `folder`, with each text of `changes` in its config replaced; returns its file."""
    folder.mkdir(parents=True, exist_ok=True)
    text = Path(local_config.source_path).read_text()
    text = text.replace(local_config.features_db, str(folder / "features.duckdb"))
    text = text.replace(local_config.labels_db, str(folder / "labels.duckdb"))
    for old, new in (changes or {}).items():
        assert old in text
        text = text.replace(old, new)
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
    # The planned pass (issue 24) serves similarity, matching, divergence and transfer's norm pass at once; transfer's
    # spliced pass and change run their own.
    pair_stages = {f"base→finetuned/{stage}": {"shards": 3, "reused": 0, "run": 3}
                   for stage in ("plan", "transfer", "change")}
    assert report.shards == arm_stages | pair_stages
    assert not Path(config.features_db + ".shards").exists()  # merged and written: the shards are gone
    assert_same_database(local_study.features_db, config.features_db)
    with duckdb.connect(config.features_db, read_only=True) as con:  # the planted dead features, merged
        dead = con.execute("SELECT count(*) FROM feature_activations WHERE arm = 'base' AND n_fired = 0").fetchone()
        assigned = con.execute("SELECT feature_a, feature_b FROM match_pairs WHERE assigned").fetchall()
    assert dead == (4,)
    live = [(int(PERMUTATION[j]), j) for j in range(D_SAE) if PERMUTATION[j] >= 4]  # A's features 0-3 never fire
    assert sorted(assigned) == sorted(live)  # the pair stages merged from shards find the planted permutation


DEMO_TOKENS = 4_096  # 32 rows of 128: two shards of 16 rows (the activation batch) in every pass


def demo_study(demo: Path, folder: Path) -> Path:
    """configs/demo.toml over the `--fast` build in `demo`, on DEMO_TOKENS of its held-out corpus, writing to
    `folder`; every relative path made absolute (the config no longer sits in the repository)."""
    text = (ROOT / "configs" / "demo.toml").read_text()
    assert "n_tokens = 60_000" in text
    text = text.replace('"data/demo/', f'"{demo}/').replace("n_tokens = 60_000", f"n_tokens = {DEMO_TOKENS}")
    text = text.replace('"data/', f'"{ROOT}/data/').replace('"configs/', f'"{ROOT}/configs/')
    text = text.replace(f'"{demo}/features.duckdb"', f'"{folder}/features.duckdb"')
    text = text.replace(f'"{demo}/labels.duckdb"', f'"{folder}/labels.duckdb"')
    folder.mkdir(parents=True)
    (folder / "study.toml").write_text(text)
    return folder / "study.toml"


@pytest.mark.slow
def test_on_the_fast_demo_the_ray_executor_publishes_the_local_executors_database(ray_instance, fast_demo,
                                                                                 tmp_path):
    """The issue's check on the embedded demo (real fine-tune, real SAELens SAEs), every arm and pair stage."""
    local = load_config(str(demo_study(fast_demo, tmp_path / "local")))
    assert run_study(local, show_progress=False).published
    on_ray = load_config(str(demo_study(fast_demo, tmp_path / "ray")))
    report = run_study(on_ray, show_progress=False, executor=RayExecutor(workers=2, shard_rows=8))
    assert report.published
    assert report.shards["base/activations"] == {"shards": 2, "reused": 0, "run": 2}
    assert report.shards["base→finetuned/plan"] == {"shards": 2, "reused": 0, "run": 2}  # the shared clean pass
    assert report.shards["base→finetuned/transfer"] == {"shards": 2, "reused": 0, "run": 2}  # its spliced pass
    assert_same_database(local.features_db, on_ray.features_db)
    with duckdb.connect(on_ray.features_db, read_only=True) as con:  # the comparison covered the whole corpus
        rows = con.execute("SELECT count(*) FROM feature_activations WHERE arm = 'base'").fetchone()[0]
        persist = con.execute("SELECT count(*) FROM features WHERE diff_status = 'persist'").fetchone()[0]
    assert rows == 768 and persist > 0  # the demo's d_sae; matching found shared features on real SAEs


KILLER = textwrap.dedent("""
    import os, signal, sys
    from precompute import shards
    kill_after, saved, save = int(sys.argv.pop(1)), [], shards.ShardStore.save
    def save_then_die(self, shard, accumulator):
        save(self, shard, accumulator)
        saved.append(shard)
        if len(saved) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # the driver dies as a machine would: no cleanup
    shards.ShardStore.save = save_then_die
    from precompute.cli import main
    sys.exit(main(sys.argv[1:]))
""")
# Five top contexts: the activation passes run again; another outlier factor (none is near one): the pair stages.
CHANGES = {"[activations]\n": "[activations]\ntop_contexts = 5\n", "outlier_factor = 1000.0": "outlier_factor = 500.0"}


def killed_run(config_path: Path, ray_address: str, kill_after: int) -> str:
    """`precompute run --executor ray` in a process killed once it has saved `kill_after` shards; its log."""
    command = [sys.executable, "-c", KILLER, str(kill_after), "run", "--config", str(config_path), "--no-progress",
               "--executor", "ray", "--ray-address", ray_address, "--ray-workers", "2",
               "--shard-rows", str(SHARD_ROWS)]
    killed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    return killed.stderr


@pytest.mark.slow
def test_a_killed_driver_leaves_the_published_database_and_the_next_run_reuses_its_shards(
        ray_instance, local_study, tmp_path):
    """Killed twice: after 2 saved shards (in base's activation pass), then after 8 more (in transfer's spliced
    pass); the published database is untouched each time, and each next run reuses the shards saved before."""
    folder = tmp_path / "killed"
    config_path = study_copy(local_study, folder, CHANGES)
    shutil.copyfile(local_study.features_db, folder / "features.duckdb")  # published, now stale
    before, shards_folder = sha256(folder / "features.duckdb"), folder / "features.duckdb.shards"
    killed_run(config_path, ray_instance, kill_after=2)
    assert sha256(folder / "features.duckdb") == before
    saved = sorted(shards_folder.rglob("*.pt"))
    assert len(saved) == 2 and all(p.parent.name.startswith("activations-") for p in saved)

    # base's missing activation shard, finetuned's 3, the planned clean pass's 3 (similarity, matching, divergence and
    # transfer's norm pass), one shard of transfer's spliced pass
    log = killed_run(config_path, ray_instance, kill_after=1 + 3 + 3 + 1)
    assert "base/activations: 3 shard(s) of 8 rows; 2 saved by an earlier run, 1 to run" in log
    assert sha256(folder / "features.duckdb") == before
    saved = [p.relative_to(shards_folder) for p in shards_folder.rglob("*.pt")]  # written stages' shards are gone
    # the planned pass's shards stay until transfer, which reads its norms, is written
    assert all(p.parts[0] == "base→finetuned" for p in saved)
    assert sorted((p.parts[1].split("-")[0], p.parent.name.split("-")[0]) for p in saved) == [
        ("plan", "plan")] * 3 + [("transfer", "pass1")]

    config = load_config(str(config_path))
    report = run_study(config, show_progress=False, executor=RayExecutor(workers=2, shard_rows=SHARD_ROWS))
    assert report.published and sha256(folder / "features.duckdb") != before
    # the rest of transfer (its norm pass merged from the saved shards feeds the spliced pass), then matching
    # Transfer's saved spliced shard is reused. The planned pass runs again, for transfer's norms alone: its saved
    # shards were cut for four stages, three of them since written (a plan's key is its set of stages; issue 24).
    assert report.shards == {"base→finetuned/plan": {"shards": 3, "reused": 0, "run": 3},
                             "base→finetuned/transfer": {"shards": 3, "reused": 1, "run": 2},
                             "base→finetuned/change": {"shards": 3, "reused": 0, "run": 3}}
    reference = load_config(str(study_copy(local_study, tmp_path / "reference", CHANGES)))
    assert run_study(reference, show_progress=False).published
    assert_same_database(reference.features_db, config.features_db)
    with duckdb.connect(config.features_db, read_only=True) as con:
        most = con.execute("SELECT max(rank) FROM contexts WHERE kind = 'top'").fetchone()[0]
    assert most == 4  # five top contexts per feature, as the changed config asks
