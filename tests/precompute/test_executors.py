"""Choosing an executor on the command line: local by default, Ray only when asked, and a one-line answer when
Ray is not installed or the options do not fit."""

import sys

from precompute.cli import main


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch, capsys):
    from precompute.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert main(["run", "--config", "configs/demo.toml", "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "make install-ray" in err and "requirements-ray.txt" in err


def test_ray_options_without_the_ray_executor_are_a_one_line_error(capsys):
    assert main(["run", "--config", "configs/demo.toml", "--shard-rows", "64"]) == 2
    assert "go with --executor ray" in capsys.readouterr().err


def test_default_shards_are_whole_batches_of_at_least_32k_tokens_and_at_most_64():
    from precompute.shards import default_shard_rows, shard_ranges

    # the demo: 470 rows of 127 tokens, batches of 16: 32,768 / 127 = 258.0 -> 259 rows -> 17 batches = 272
    assert default_shard_rows(470, 127, 16) == 272
    assert shard_ranges(470, 272) == [(0, 272), (272, 470)]
    # 10M tokens of gpt2-small: 78,741 rows; 64 shards need 1,231 rows -> 77 batches of 16 = 1,232
    assert default_shard_rows(78_741, 127, 16) == 1_232
    assert len(shard_ranges(78_741, 1_232)) == 64


def test_a_stages_shards_are_saved_by_key_and_range_and_discarded_once_written(tmp_path):
    import torch

    from precompute.shards import ShardStore

    store = ShardStore(tmp_path / "f.duckdb", "base", "activations", "ab" * 32)
    store.save((0, 8), {"n": torch.tensor([3])})
    assert store.finished([(0, 8), (8, 16)]) == [(0, 8)]
    assert store.load((0, 8))["n"].item() == 3
    assert store.path((0, 8)) == tmp_path / "f.duckdb.shards" / "base" / f"activations-{'ab' * 8}" / "0-8.pt"
    older = ShardStore(tmp_path / "f.duckdb", "base", "activations", "cd" * 32)  # an earlier key's leftovers
    older.save((0, 8), {})
    store.discard()
    assert not (tmp_path / "f.duckdb.shards").exists()


def test_fresh_discards_every_saved_shard(tmp_path):
    from precompute.shards import ShardStore, discard_all

    ShardStore(tmp_path / "f.duckdb", "base", "quality", "ef" * 32).save((0, 8), {})
    discard_all(tmp_path / "f.duckdb")
    assert not (tmp_path / "f.duckdb.shards").exists()


def test_a_pair_stages_passes_are_saved_apart_and_discarded_together(tmp_path):
    from precompute.shards import ShardStore

    norms = ShardStore(tmp_path / "f.duckdb", "base→ft", "transfer", "ab" * 32, part="pass0")
    spliced = ShardStore(tmp_path / "f.duckdb", "base→ft", "transfer", "ab" * 32, part="pass1")
    norms.save((0, 8), {"pass": 0})
    spliced.save((0, 8), {"pass": 1})
    assert norms.path((0, 8)).parent.name == "pass0" and spliced.load((0, 8)) == {"pass": 1}
    assert norms.finished([(0, 8), (8, 16)]) == [(0, 8)]
    ShardStore(tmp_path / "f.duckdb", "base→ft", "transfer", "ab" * 32).discard()  # what stage_written does
    assert not (tmp_path / "f.duckdb.shards").exists()
