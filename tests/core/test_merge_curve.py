"""Choosing t: the equal-accuracy point on planted curves (worked by hand), and next-token accuracy on a model that
always predicts token + 1."""

from types import SimpleNamespace

import pytest
import torch

from core.errors import StudyInputError
from core.merge_curve import SlerpCurve, equal_accuracy_t, next_token_accuracy, t_grid

GRID = t_grid(0.1)


def test_grid_is_eleven_points_from_0_to_1():
    assert GRID == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert t_grid(0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(StudyInputError, match="must divide 1"):
        t_grid(0.3)


def test_linear_curves_cross_where_the_algebra_says():
    # A falls 0.7 -> 0.2, B rises 0.2 -> 0.5: 0.7 - 0.5 t = 0.2 + 0.3 t at t = 0.625, accuracy 0.3875.
    point = equal_accuracy_t(GRID, [0.7 - 0.5 * t for t in GRID], [0.2 + 0.3 * t for t in GRID])
    assert point.crossed and point.t == pytest.approx(0.625)
    assert point.accuracy_a == pytest.approx(0.3875) and point.accuracy_b == pytest.approx(0.3875)


def test_curved_crossing_is_interpolated_between_grid_points():
    # gap(t) = 0.3 - 0.3 t - 0.3 t^2: +0.012 at 0.6 and -0.057 at 0.7, so t = 0.6 + 0.1 * 0.012 / 0.069.
    acc_a = [0.5 - 0.3 * t * t for t in GRID]
    acc_b = [0.2 + 0.3 * t for t in GRID]
    point = equal_accuracy_t(GRID, acc_a, acc_b)
    assert point.t == pytest.approx(0.6 + 0.1 * 0.012 / 0.069)
    assert point.t == pytest.approx(0.6174, abs=1e-4)  # the true root (sqrt(5) - 1) / 2 = 0.6180 is 0.0006 away


def test_a_grid_point_with_equal_accuracies_is_taken_as_is():
    point = equal_accuracy_t([0.0, 0.5, 1.0], [0.6, 0.4, 0.2], [0.2, 0.4, 0.6])
    assert (point.t, point.accuracy_a, point.crossed) == (0.5, 0.4, True)


def test_two_crossings_keep_the_more_accurate_one():
    # Equal at t = 0.25 (accuracy 0.3) and at t = 0.75 (accuracy 0.5).
    ts = [0.0, 0.5, 1.0]
    point = equal_accuracy_t(ts, [0.2, 0.4, 0.6], [0.4, 0.2, 0.8])
    assert point.t == pytest.approx(0.75) and point.accuracy_a == pytest.approx(0.5)


def test_curves_that_never_cross_give_the_closest_grid_point():
    point = equal_accuracy_t([0.0, 0.5, 1.0], [0.6, 0.5, 0.55], [0.2, 0.45, 0.3])
    assert (point.t, point.crossed) == (0.5, False)


def test_bad_curves_are_one_line():
    with pytest.raises(StudyInputError, match="same number"):
        equal_accuracy_t([0.0, 1.0], [0.5], [0.5, 0.4])
    with pytest.raises(StudyInputError, match="must increase"):
        equal_accuracy_t([0.0, 0.0], [0.5, 0.4], [0.5, 0.4])


def test_curve_round_trips_and_chooses_t():
    curve = SlerpCurve("medical", "code", GRID, [0.7 - 0.5 * t for t in GRID], [0.2 + 0.3 * t for t in GRID],
                       0.25, 0.15)
    again = SlerpCurve.from_dict(curve.to_dict())
    assert again.chosen.t == pytest.approx(0.625) and again.base_accuracy_b == 0.15
    assert curve.to_dict()["chosen"]["t"] == pytest.approx(0.625)


class PlusOne(torch.nn.Module):
    """Predicts token + 1 (mod 10) at every position."""

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.nn.functional.one_hot((input_ids + 1) % 10, 10).float())


def test_next_token_accuracy_counts_right_guesses():
    rows = torch.tensor([[0, 1, 2, 3, 9], [5, 6, 8, 9, 0]])
    # row 0: 1 2 3 right, 9 wrong; row 1: 6 right, 8 wrong, 9 right, 0 right -> 6 of 8.
    assert next_token_accuracy(PlusOne(), rows, batch_size=1) == pytest.approx(6 / 8)
    # With 0 as the separator only text tokens count: row 0 predicts 1 2 3 as a document's first tokens (after
    # BOS), leaving 9 (wrong); row 1's 6 8 9 are first tokens and 0 is a separator: 0 of 1.
    assert next_token_accuracy(PlusOne(), rows, special_ids=[0]) == 0.0
    longer = torch.tensor([[0, 1, 2, 3, 4, 5, 7]])  # text tokens 4 (right), 5 (right), 7 (wrong)
    assert next_token_accuracy(PlusOne(), longer, special_ids=[0]) == pytest.approx(2 / 3)
