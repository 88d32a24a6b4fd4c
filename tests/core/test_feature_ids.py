"""The one parser of feature ids and arm names, on a table of what people type into URLs and boxes."""

import pytest

from core.errors import StudyInputError
from core.feature_ids import FeatureIdError, parse_arm, parse_feature_id, parse_feature_ids, parse_feature_ref

WIDTHS = {"base": 1536, "finetuned": 1536}


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("1535", 1535), (" 12 ", 12), ("012", 12), ("+7", 7), (12, 12),
])
def test_a_feature_id_in_range_is_read(text, expected):
    assert parse_feature_id(text, "base", 1536) == expected


@pytest.mark.parametrize("text, message", [
    ("999999", "base has no feature 999999 (0–1535)"),
    ("1536", "base has no feature 1536 (0–1535)"),  # d_sae itself is one past the last id
    ("-5", "base has no feature -5 (0–1535)"),
    ("abc", "'abc' is not a feature id: base has features 0–1535"),
    ("x", "'x' is not a feature id: base has features 0–1535"),
    ("1.5", "'1.5' is not a feature id: base has features 0–1535"),
    ("1e3", "'1e3' is not a feature id: base has features 0–1535"),
    ("١٢", "'١٢' is not a feature id: base has features 0–1535"),  # int() would take it
    ("12,40", "'12,40' is not a feature id: base has features 0–1535"),  # one id, not a list
    ("", "no feature id given (base has features 0–1535)"),
    (None, "no feature id given (base has features 0–1535)"),
])
def test_a_bad_feature_id_is_one_line_that_names_the_range(text, message):
    with pytest.raises(FeatureIdError) as err:
        parse_feature_id(text, "base", 1536)
    assert str(err.value) == message and "\n" not in message


@pytest.mark.parametrize("text, expected", [
    ("12", [12]), ("12,40", [12, 40]), ("12, 40", [12, 40]), ("40,12", [40, 12]), ("12,12,40", [12, 40]),
    ("12,,40,", [12, 40]), (" 0 , 1535 ", [0, 1535]),
])
def test_a_list_of_ids_keeps_its_order_and_drops_repeats(text, expected):
    assert parse_feature_ids(text, "base", 1536) == expected


@pytest.mark.parametrize("text, message", [
    ("12,abc,x", "'abc', 'x' are not feature ids: base has features 0–1535, e.g. 12 or 12, 40"),
    ("4,999999,-1", "base has no features 999999, -1 (0–1535)"),
    ("4,2000", "base has no feature 2000 (0–1535)"),
    (" , ", "no feature id given (base has features 0–1535)"),
])
def test_a_bad_list_names_every_bad_id(text, message):
    with pytest.raises(FeatureIdError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        parse_feature_ids(text, "base", 1536)


@pytest.mark.parametrize("arm, message", [
    ("nope", "no arm 'nope' (arms: base, finetuned)"),
    ("Base", "no arm 'Base' (arms: base, finetuned)"),  # arm names are exact
    ("", "no arm given (arms: base, finetuned)"),
    (None, "no arm given (arms: base, finetuned)"),
])
def test_an_unknown_arm_lists_the_arms(arm, message):
    with pytest.raises(FeatureIdError) as err:
        parse_arm(arm, ["base", "finetuned"])
    assert str(err.value) == message


def test_a_reference_checks_the_arm_first_then_the_id_against_that_arms_width():
    widths = {"base": 6, "finetuned": 10}
    assert parse_feature_ref("finetuned", "8", widths) == ("finetuned", 8)
    with pytest.raises(FeatureIdError, match=r"^base has no feature 8 \(0–5\)$"):
        parse_feature_ref("base", "8", widths)
    with pytest.raises(FeatureIdError, match=r"^no arm 'nope' \(arms: base, finetuned\)$"):
        parse_feature_ref("nope", "abc", widths)  # the arm's error, not the id's: no range to check it against


def test_the_error_is_a_study_input_error_so_the_command_line_prints_one_line():
    assert issubclass(FeatureIdError, StudyInputError)
