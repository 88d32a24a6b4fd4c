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
