"""Timing cases against each other on a CPU shared with other jobs."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def interleaved_times(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per case over `repeats` rounds after one warm-up round. The cases take turns within a round, each
    first in half the rounds, so a neighbour's burst of load falls on all of them alike; CUDA work is waited for."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(repeats + 1):
        for name in (list(cases) if round_ % 2 else list(cases)[::-1]):
            start = time.perf_counter()
            cases[name]()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if round_:
                times[name].append(time.perf_counter() - start)
    return times
