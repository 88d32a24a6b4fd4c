"""Shared fixtures: offline environment, every RNG seeded, and factories for tiny models and SAEs."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from precompute.cli import offline_defaults  # noqa: E402  (needs ROOT on sys.path)

offline_defaults()


@pytest.fixture(autouse=True)
def seed_everything():
    """Every test starts from the same RNG state (python, numpy, torch)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: on a shared machine torch's thread pool only adds waits (13 ms an op under load). A module
    asks for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def three_arm_study(tmp_path_factory):
    """tests/pair_study.py's three-arm study, run once with the pairs base → ft2 and base → finetuned (in that
    order): (StudyConfig, RunReport). Tests that change it work on a copy."""
    from pair_study import build_three_arm_study
    from precompute.run import run_study

    config = build_three_arm_study(tmp_path_factory.mktemp("three"), [("base", "ft2"), ("base", "finetuned")])
    return config, run_study(config, show_progress=False)


@pytest.fixture(scope="session")
def fast_demo(tmp_path_factory) -> Path:
    """The embedded demo as `build-demo --fast` writes it (real fine-tune, real SAELens SAEs; minutes on 2 CPU
    cores), built once for every test module that reads it. Read-only: a test that changes it works on a copy."""
    from core.config import load_config
    from precompute.demo import build as demo_build

    out = tmp_path_factory.mktemp("demo") / "demo"
    assert not demo_build.build_demo(load_config(ROOT / "configs" / "demo.toml"), out, fast=True).skipped
    return out
