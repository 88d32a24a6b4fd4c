"""The random control for steering: directions of exactly the steering vector's norm, seeded by (study seed,
feature, index), all but orthogonal to the feature in a wide space; generation along a vector is the feature's own
generation when the vector is the feature's; the verdict keeps the paper's rule and adds the control's."""

import math

import numpy as np
import pytest
import torch

from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from core.steer_controls import (direction_seed, generate_along, random_direction, random_directions,
                                 steering_verdict)
from core.steering import SamplingSettings, generate_steered, steering_vector
from factories import build_gpt2_folder, build_sae, byte_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def feature_vector(d_in: int, coefficient: float = 50.0, feature: int = 3) -> torch.Tensor:
    """The steering vector of `feature` in a random SAE whose rows are not unit: coefficient × the unit row."""
    W_dec = torch.randn(8, d_in, generator=torch.Generator().manual_seed(1)) * 3.0
    return steering_vector(W_dec, {feature: coefficient})


def test_each_direction_has_the_steering_vectors_norm():
    vector = feature_vector(64, coefficient=-7.5)
    assert float(vector.norm()) == pytest.approx(7.5, rel=1e-6)  # |c|: the unit row times the coefficient
    directions = random_directions(vector, 5, study_seed=0, features=(3,))
    assert directions.shape == (5, 64) and directions.dtype == vector.dtype
    np.testing.assert_allclose(directions.double().norm(dim=1).numpy(), 7.5, rtol=1e-6)
    assert random_directions(vector, 0, 0, (3,)).shape == (0, 64)  # no control: no directions


def test_directions_are_seeded_by_study_seed_feature_and_index():
    vector = feature_vector(32)
    first = random_directions(vector, 4, study_seed=0, features=(3,))
    assert torch.equal(first, random_directions(vector, 4, study_seed=0, features=(3,)))  # same study, same draws
    assert torch.equal(first[:2], random_directions(vector, 2, study_seed=0, features=(3,)))  # j does not depend on n
    assert len({tuple(row.tolist()) for row in first}) == 4  # one direction per index
    for other in (random_directions(vector, 4, study_seed=1, features=(3,)),
                  random_directions(vector, 4, study_seed=0, features=(4,))):
        assert not torch.isclose(first, other).all(dim=1).any()  # another study, another feature: other directions
    seeds = [direction_seed(0, (3,), j) for j in range(4)]
    assert len(set(seeds)) == 4
    shown = random_direction(seeds[2], 32, float(vector.norm()))  # the page shows the seed: it alone reproduces it
    np.testing.assert_allclose(first[2].numpy(), shown, rtol=1e-6)


def test_directions_are_nearly_orthogonal_to_the_feature_in_a_wide_space():
    """At d_in 4096 a Gaussian direction's cosine with a fixed one has spread 1/64; 20 of them stay within 5 spreads,
    where the feature's own direction has cosine 1."""
    vector = feature_vector(4096)
    directions = random_directions(vector, 20, study_seed=0, features=(3,))
    cosines = (directions.double() @ vector.double()) / (directions.double().norm(dim=1) * vector.double().norm())
    assert float(cosines.abs().max()) < 5 / 64
    assert float(cosines.abs().mean()) < 2 / 64  # E|cos| = √(2/π)/64 ≈ 0.8/64


def test_generating_along_the_features_own_vector_is_its_steered_generation(tmp_path):
    """The control runs the same model, hook, lock and sampling as the feature: only the vector differs."""
    folder = build_gpt2_folder(tmp_path / "model", byte_tokenizer(), n_positions=64, initializer_range=0.5)
    hf, tok = load_hf_model(str(folder))
    model = hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")
    arm = LoadedArm("tiny", model, build_sae(d_in=32, d_sae=8), "blocks.1.hook_resid_pre", 8, "cpu",
                    DEFAULT_PROCESSING, hf)
    settings = SamplingSettings(max_new_tokens=8, seed=3)
    steered = generate_steered(arm, {2: 40.0}, "the heart", settings)
    along = generate_along(arm, steering_vector(arm.sae.W_dec, {2: 40.0}), "the heart", settings)
    assert along.token_ids == steered.token_ids
    other = generate_along(arm, random_directions(steering_vector(arm.sae.W_dec, {2: 40.0}), 1, 0, (2,))[0],
                           "the heart", settings)
    assert other.token_ids != steered.token_ids  # a push of norm 40 elsewhere writes something else


def test_passing_keeps_the_papers_rule_and_passing_controlled_needs_both():
    """Three seeds; two random directions. Means by hand: unsteered 0.2, steered 0.5, random 0.6 (0.4 and 0.8)."""
    unsteered, steered = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]
    verdict = steering_verdict(unsteered, steered, np.array([[0.3, 0.4, 0.5], [0.7, 0.8, 0.9]]))
    assert verdict.mean_unsteered == pytest.approx(0.2) and verdict.mean_steered == pytest.approx(0.5)
    assert verdict.mean_random == pytest.approx(0.6)
    assert verdict.passing is True  # the paper's rule: beats unsteered
    assert verdict.beats_random is False and verdict.random_beaten == 1  # beats direction 0 (0.4), not 1 (0.8)
    assert verdict.passing_controlled is False
    both = steering_verdict(unsteered, steered, np.array([[0.3, 0.4, 0.5], [0.1, float("nan"), 0.2]]))
    assert both.mean_random == pytest.approx(0.3)  # the NaN sample left out: (0.3+0.4+0.5+0.1+0.2) / 5
    assert (both.passing, both.beats_random, both.random_beaten, both.passing_controlled) == (True, True, 2, True)
    random_only = steering_verdict([0.6] * 3, steered, np.array([[0.1, 0.1, 0.1]]))
    assert (random_only.passing, random_only.beats_random, random_only.passing_controlled) == (False, True, False)


def test_without_a_control_the_papers_rule_stands_alone_and_nan_never_passes():
    alone = steering_verdict([0.1], [0.5], np.zeros((0, 1)))
    assert alone.passing is True and alone.beats_random is None and alone.passing_controlled is None
    assert math.isnan(alone.mean_random)
    unscored = steering_verdict([0.1, 0.2], [float("nan")] * 2, np.array([[0.0, 0.0]]))
    assert unscored.passing is False and unscored.beats_random is False and unscored.random_beaten == 0
