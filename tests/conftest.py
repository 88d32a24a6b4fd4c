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
