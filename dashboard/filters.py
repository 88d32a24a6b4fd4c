"""The Features page's filters and sort: their place in the URL, their names in words, the DuckDB filter they
make, and which of them emptied the table. No widgets here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import streamlit as st

from core.database import feature_fields
from core.database.feature_fields import FeatureField
from core.database.queries import FATES, LABEL_STATUSES, FeatureFilter
from core.feature_ids import parse_arm
from dashboard import place
from dashboard import state_keys as keys

# Sort choices in words -> column of the features view (the same words head the grid's columns), as declared.
SORTS = {f.sort_name: f.name for f in feature_fields.SORTS} | {"feature id": "feature"}
# Declared range filters without a widget of their own above (coherence, medical matches and density have one):
# each gets a Min. and a Max. box and `<name>_min`, `<name>_max` in the URL.
BOUNDED = tuple(f for f in feature_fields.FILTERED if f.name not in ("coherence", "med_matches", "frac_nonzero"))
# The default opens on the study's question: most medical words among the top tokens first (the paper's candidate
# rule), ties to the more coherent; dead features hidden. Checked on the demo: by coherence the first rows are
# function-word and punctuation features (" to | . | , | the", coherence 0.85), several of them dead; by density
# "the | a" and word pieces ("in | ar | ent"); by medical matches " abnormal | abnormality | liver | urine".
DEFAULT_SORT = "medical matches"
# A study whose candidates may come from the tokens they fire on opens on those (on SmolLM2 the top tokens of the
# few decoder candidates are mostly chance: "cleavage | frontal | ennial | tin"; the fired ones read "renal urine").
DEFAULT_SORT_BY_RULE = {"decoder": DEFAULT_SORT, "fired": "medical words fired on", "either": "medical words fired on"}
PAGE_SIZES = (25, 50, 100, 200)
_ORDER = {"desc": True, "asc": False}
_DEAD = {"shown": True, "hidden": False}


def _whole(low: int, high: int) -> Callable[[str, dict], int]:
    def parse(text: str, _: dict) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise ValueError(f"expected a whole number {low}–{high}")
        return int(text)
    return parse


def _number(text: str) -> float:
    """float(text), or NaN (which no bound admits) for text that is no number: the caller says what it expects."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _fraction(text: str, _: dict) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a number 0–1")
    return value


def _coherence(text: str, _: dict) -> tuple[float, float]:
    low, sep, high = text.partition("..")
    if not sep or not -1.0 <= _number(low) <= _number(high) <= 1.0:
        raise ValueError("expected a range like 0.2..1 within -1..1")
    return float(low), float(high)


def _bound(text: str, _: dict) -> float:
    value = _number(text)
    if value != value:
        raise ValueError("expected a number")
    return value


def _one_of(choices: dict | tuple) -> Callable[[str, dict], Any]:
    def parse(text: str, _: dict) -> Any:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
        return choices[text] if isinstance(choices, dict) else text
    return parse


def fields(arms: list[str], default_sort: str = DEFAULT_SORT) -> list[place.Field]:
    """The page's place; filters at their default stay out of the URL, sort and order are always in it."""
    def arm_list(text: str, _: dict) -> list[str]:
        return [parse_arm(name, arms) for name in text.split(",") if name.strip()]

    def fate_list(text: str, _: dict) -> list[str]:
        fates = [name.strip() for name in text.split(",") if name.strip()]
        if not set(fates) <= set(FATES):
            raise ValueError(f"expected fates among {', '.join(FATES)}")
        return [fate for fate in FATES if fate in fates]  # in the widget's order

    flip = {value: name for name, value in _ORDER.items()}
    return [
        place.Field(keys.FEATURES_ARMS, "arms", list(arms), arm_list, ",".join),
        place.Field(keys.FEATURES_COHERENCE, "coherence", (-1.0, 1.0), _coherence, lambda r: f"{r[0]:g}..{r[1]:g}"),
        place.Field(keys.FEATURES_MIN_MATCHES, "min_matches", 0, _whole(0, 50)),
        place.Field(keys.FEATURES_WORD, "word", ""),
        place.Field(keys.FEATURES_EXPLANATION, "explained", ""),
        place.Field(keys.FEATURES_BY_MEANING, "match", False, _one_of({"meaning": True, "words": False}),
                    lambda meaning: "meaning" if meaning else "words"),
        place.Field(keys.FEATURES_DENSITY_MIN, "density_min", 0.0, _fraction, lambda x: f"{x:g}"),
        place.Field(keys.FEATURES_DENSITY_MAX, "density_max", 1.0, _fraction, lambda x: f"{x:g}"),
        place.Field(keys.FEATURES_LABEL_STATUS, "label", "any", _one_of(LABEL_STATUSES)),
        place.Field(keys.FEATURES_DEAD, "dead", False, _one_of(_DEAD), lambda shown: "shown" if shown else "hidden"),
        place.Field(keys.FEATURES_CANDIDATES, "candidates", False, _one_of({"only": True, "any": False}),
                    lambda only: "only" if only else "any"),
        place.Field(keys.FEATURES_FATES, "fate", [], fate_list,
                    lambda fates: ",".join(fate for fate in FATES if fate in fates)),  # one link per filter
        place.Field(keys.FEATURES_SORT, "sort", default_sort, _one_of(tuple(SORTS)), always=True),
        place.Field(keys.FEATURES_DESCENDING, "order", True, _one_of(_ORDER), flip.get, always=True),
        *(place.Field(keys.FEATURES_BOUND.format(f.name, end), f"{f.name}_{end}", None, _bound, lambda x: f"{x:g}")
          for f in BOUNDED for end in ("min", "max")),
        place.Field(keys.FEATURES_PAGE, "page", 1, _whole(1, 10**9)),
        place.Field(keys.FEATURES_PAGE_SIZE, "rows", 50, _one_of({str(n): n for n in PAGE_SIZES})),
    ]


def feature_filter(values: dict[str, Any], arms: list[str]) -> FeatureFilter:
    """The DuckDB filter for the widgets' values (by state key); a bound at its widest is no bound."""
    low, high = values[keys.FEATURES_COHERENCE]
    full_range = (low, high) == (-1.0, 1.0)
    return FeatureFilter(
        arms=tuple(values[keys.FEATURES_ARMS]), coherence_min=None if full_range else low,
        coherence_max=None if full_range else high, min_matches=int(values[keys.FEATURES_MIN_MATCHES]),
        density_min=values[keys.FEATURES_DENSITY_MIN] or None,
        density_max=None if values[keys.FEATURES_DENSITY_MAX] >= 1.0 else values[keys.FEATURES_DENSITY_MAX],
        label_status=values[keys.FEATURES_LABEL_STATUS], word=values[keys.FEATURES_WORD].strip(),
        live_only=not values[keys.FEATURES_DEAD], explanation=values[keys.FEATURES_EXPLANATION].strip(),
        candidates_only=bool(values.get(keys.FEATURES_CANDIDATES, False)),
        fates=tuple(values.get(keys.FEATURES_FATES, ())),
        ranges=tuple((f.name, values.get(keys.FEATURES_BOUND.format(f.name, "min")),
                      values.get(keys.FEATURES_BOUND.format(f.name, "max"))) for f in BOUNDED))


def active(flt: FeatureFilter, arms: list[str]) -> dict[str, FeatureFilter]:
    """Each filter that narrows the table, in words -> the same filter without it."""
    out = {}
    if set(flt.arms) != set(arms):
        out[f"arms {', '.join(flt.arms) or '(none)'}"] = dataclasses.replace(flt, arms=tuple(arms))
    if flt.coherence_min is not None or flt.coherence_max is not None:
        out[f"coherence {flt.coherence_min:g} to {flt.coherence_max:g}"] = dataclasses.replace(
            flt, coherence_min=None, coherence_max=None)
    if flt.min_matches:
        out[f"medical matches ≥ {flt.min_matches}"] = dataclasses.replace(flt, min_matches=0)
    if flt.word:
        out[f"top or fired tokens include {flt.word!r}"] = dataclasses.replace(flt, word="")
    if flt.explanation:
        out[f"explanation mentions {flt.explanation!r}"] = dataclasses.replace(flt, explanation="")
    if flt.density_min is not None or flt.density_max is not None:
        out[f"density {flt.density_min or 0:g} to {1 if flt.density_max is None else flt.density_max:g}"] = \
            dataclasses.replace(flt, density_min=None, density_max=None)
    if flt.label_status != "any":
        out[f"label {flt.label_status.replace('_', ' ')}"] = dataclasses.replace(flt, label_status="any")
    if flt.candidates_only:
        out["medical candidates only"] = dataclasses.replace(flt, candidates_only=False)
    if flt.fates:
        out[f"fate {' or '.join(flt.fates)}"] = dataclasses.replace(flt, fates=())
    for name, low, high in flt.ranges:
        if low is not None or high is not None:
            others = tuple(r for r in flt.ranges if r[0] != name)
            out[f"{feature_fields.BY_NAME[name].label} {_between(low, high)}"] = dataclasses.replace(flt, ranges=others)
    if flt.live_only:
        out["hiding dead features"] = dataclasses.replace(flt, live_only=False)
    return out


def _between(low: float | None, high: float | None) -> str:
    if high is None:
        return f"≥ {low:g}"
    return f"≤ {high:g}" if low is None else f"{low:g} to {high:g}"


def column(field: FeatureField, title: str, help: str | None = None) -> object:
    """The Features table's column for a declared field: a list, a number in its format, or text."""
    help = help or field.help or None
    if str(field.type).startswith("list"):
        return st.column_config.ListColumn(title, help=help)
    if field.format:
        return st.column_config.NumberColumn(title, format=field.format, help=help)
    return st.column_config.TextColumn(title, help=help, width="large" if field.shown_as == "top_tokens" else None)


def why_empty(flt: FeatureFilter, arms: list[str], count: Callable[[FeatureFilter], int]) -> str:
    """One line for an empty table: the filter(s) that alone empty it, with what leaving each out would give."""
    narrowing = active(flt, arms)
    alone = {name: count(without) for name, without in narrowing.items()}
    culprits = {name: n for name, n in alone.items() if n > 0}
    if culprits:
        return "No feature matches. " + "; ".join(f"Without **{name}**, {n:,} would" for name, n in culprits.items()) \
            + "."
    if narrowing:
        return f"No feature matches: **{'**, **'.join(narrowing)}** together leave none (no one of them alone)."
    return "This study has no features."
