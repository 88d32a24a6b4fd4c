"""Feature ids and arm names typed by a person (a URL, a text box, `--features 12,40`): one parser for all, and
one line that says what is wrong when the input names nothing. Pure: no streamlit, no database."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from core.errors import StudyInputError

_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take "١٢" or "1_0"


class FeatureIdError(StudyInputError):
    """An arm or feature id that names nothing; the message is one line for the user."""


def id_range(d_sae: int) -> str:
    """The ids of an SAE with d_sae features, as the pages write them: "0–1535"."""
    return f"0–{d_sae - 1}"


def parse_arm(text: str | None, arms: Sequence[str]) -> str:
    """`text` if it is one of `arms` (exactly, after trimming spaces)."""
    name = (text or "").strip()
    if name in arms:
        return name
    listed = ", ".join(arms)
    if not name:
        raise FeatureIdError(f"no arm given (arms: {listed})")
    raise FeatureIdError(f"no arm {name!r} (arms: {listed})")


def parse_feature_id(text: str | int | None, arm: str, d_sae: int) -> int:
    """One feature id of `arm`, whose SAE has `d_sae` features: a whole number in 0..d_sae-1."""
    return parse_feature_ids(str(text) if text is not None else "", arm, d_sae, single=True)[0]


def parse_feature_ids(text: str, arm: str, d_sae: int, single: bool = False) -> list[int]:
    """Feature ids separated by commas ("12, 40"), each in 0..d_sae-1; repeats dropped, order kept."""
    parts = [part.strip() for part in text.split(",")] if not single else [text.strip()]
    parts = [part for part in parts if part]
    if not parts:
        raise FeatureIdError(f"no feature id given ({arm} has features {id_range(d_sae)})")
    not_numbers = [part for part in parts if not _WHOLE_NUMBER.fullmatch(part)]
    if not_numbers:
        shown = ", ".join(repr(part) for part in not_numbers)
        verb = "is not a feature id" if len(not_numbers) == 1 else "are not feature ids"
        example = "" if single else ", e.g. 12 or 12, 40"
        raise FeatureIdError(f"{shown} {verb}: {arm} has features {id_range(d_sae)}{example}")
    ids = list(dict.fromkeys(int(part) for part in parts))
    outside = [i for i in ids if not 0 <= i < d_sae]
    if outside:
        noun = "feature" if len(outside) == 1 else "features"
        raise FeatureIdError(f"{arm} has no {noun} {', '.join(map(str, outside))} ({id_range(d_sae)})")
    return ids


def parse_feature_ref(arm_text: str | None, feature_text: str | None, widths: Mapping[str, int]) -> tuple[str, int]:
    """(arm, feature) from two pieces of text; `widths` maps each arm to its d_sae. The arm is checked first:
    without one there is no range to check the id against."""
    arm = parse_arm(arm_text, list(widths))
    return arm, parse_feature_id(feature_text, arm, widths[arm])
