"""The random control for steering (issue 22): does a feature's direction move the text toward what the feature
reads more than any push of the same size does?

For a feature steered with coefficient c the vector added is v = c × W_dec[f] / ‖W_dec[f]‖ (core.steering). Its
controls are directions drawn from a standard Gaussian in d_in and scaled to ‖v‖: the same push, no feature.
Direction j is drawn by numpy's PCG64 from the seed `direction_seed(study seed, features, j)`, so a study draws the
same directions on every machine and run, and direction j of a feature is the same on the Steer page and in
Table 1. In d_in dimensions a Gaussian direction's cosine with any fixed direction has spread 1/√d_in (0.04 at
SmolLM2's 576): the controls are all but orthogonal to the feature.

The verdict (`steering_verdict`): `passing`, the paper's rule, is mean steered similarity > mean unsteered;
`beats_random` is mean steered > the mean over every random direction and seed; `passing_controlled` needs both.
`random_beaten` counts the directions whose own mean (over the seeds) the steered mean exceeds, so the rule can be
read. A NaN (no score) sample is left out of each mean; a NaN mean never passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from core.loading import LoadedArm
from core.steering import Generation, SamplingSettings, generate, steering


def direction_seed(study_seed: int, features: Sequence[int], index: int) -> int:
    """The seed of random direction `index` for steering `features` (one id for Table 1), from the study's seed."""
    entropy = [int(study_seed) % 2**32, *(int(f) for f in features), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def random_direction(seed: int, d_in: int, norm: float) -> np.ndarray:
    """A Gaussian direction of length `norm`: [d_in] float64, reproducible from `seed` alone."""
    draw = np.random.default_rng(seed).standard_normal(d_in)
    return draw * (norm / np.linalg.norm(draw))


def random_directions(vector: Tensor, n: int, study_seed: int, features: Sequence[int]) -> Tensor:
    """n random directions of `vector`'s norm, [n, d_in] on its device and dtype; vector [d_in] is the steering
    vector of `features` (core.steering.steering_vector). Row j is `random_direction(direction_seed(.., j), ..)`."""
    norm = float(vector.detach().double().norm())
    rows = [random_direction(direction_seed(study_seed, features, j), vector.shape[-1], norm) for j in range(n)]
    stacked = np.stack(rows) if rows else np.zeros((0, vector.shape[-1]))
    return torch.from_numpy(stacked).to(device=vector.device, dtype=vector.dtype)


def generate_along(arm: LoadedArm, vector: Tensor, prompt: str, settings: SamplingSettings,
                   on_token: Callable[[int], None] | None = None) -> Generation:
    """`generate` with `vector` [d_in] added at the arm's SAE hook at every position, as `generate_steered` adds a
    feature's (same model, lock and sampling: for the same settings only the vector differs)."""
    with steering(arm.model, arm.hook_name, vector, arm.hf_model):
        return generate(arm.model, prompt, settings, on_token, arm.hf_model)


@dataclass(frozen=True)
class SteeringVerdict:
    """One feature's steering result: means over the seeds, the paper's rule and the random control's."""

    mean_unsteered: float
    mean_steered: float
    mean_random: float  # over every direction and seed; NaN without a control
    passing: bool  # the paper's rule: steered > unsteered
    beats_random: bool | None  # steered > mean_random; None: no control was run
    random_beaten: int | None  # directions whose mean the steered mean exceeds
    passing_controlled: bool | None  # passing and beats_random


def nan_mean(values: Sequence[float] | np.ndarray) -> float:
    """Mean without the NaN (no score) values; NaN when every value is NaN or there are none."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def steering_verdict(unsteered: Sequence[float], steered: Sequence[float], random: np.ndarray) -> SteeringVerdict:
    """unsteered, steered: one similarity per seed; random [n_directions, n_seeds] (0 directions: no control)."""
    random = np.asarray(random, dtype=np.float64).reshape(-1, len(steered))
    mean_unsteered, mean_steered = nan_mean(unsteered), nan_mean(steered)
    passing = bool(mean_steered > mean_unsteered)  # NaN never passes
    if not len(random):
        return SteeringVerdict(mean_unsteered, mean_steered, float("nan"), passing, None, None, None)
    mean_random = nan_mean(random.ravel())
    beats = bool(mean_steered > mean_random)
    beaten = sum(bool(mean_steered > nan_mean(row)) for row in random)
    return SteeringVerdict(mean_unsteered, mean_steered, mean_random, passing, beats, beaten, passing and beats)
