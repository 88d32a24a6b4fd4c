"""`steer-eval --features`: ids go through the parser the dashboard uses (core.feature_ids), before any model
is steered."""

import pytest

from core.errors import StudyInputError
from precompute.steer_eval import choose_features


@pytest.mark.parametrize("which, expected", [("4,1", [1, 4]), ("5", [5]), (" 0, 5 ,0", [0, 5])])
def test_ids_in_range_are_chosen_sorted_once_each(which, expected):
    assert choose_features(None, None, "base", which, "fp", 6) == expected


@pytest.mark.parametrize("which, message", [
    ("4,999", "--features: base has no feature 999 (0–5); or give candidates or labelled"),
    ("-5", "--features: base has no feature -5 (0–5); or give candidates or labelled"),
    ("abc", "--features: 'abc' is not a feature id: base has features 0–5, e.g. 12 or 12, 40; or give candidates "
            "or labelled"),
    ("1.0,2", "--features: '1.0' is not a feature id: base has features 0–5, e.g. 12 or 12, 40; or give "
              "candidates or labelled"),
])
def test_a_bad_id_is_one_line_naming_the_arm_and_its_range(which, message):
    with pytest.raises(StudyInputError) as err:
        choose_features(None, None, "base", which, "fp", 6)
    assert str(err.value) == message
