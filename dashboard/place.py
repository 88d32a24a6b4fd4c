"""The user's place on a page (the feature shown, the filters), kept twice: in the URL, so a link shares it and
the browser's Back returns to it, and in session state, so a visit to another page does not lose it (Streamlit
drops the state of every widget a run does not draw, so a page's filters vanish when another page runs).

What Streamlit 1.67 does, read from its frontend: a run that changes `st.query_params` pushes a new history entry
(replaces it during a Back / Forward), and Back reruns the page with the older URL. A page that trusts its widgets
over the URL on a rerun writes the newer place straight back, and Back seems to do nothing. So a URL that differs
from the one this page wrote last came from outside (a link, Back, an address typed) and decides the place;
otherwise the widgets do. (A widget's own `bind="query-params"` replaces the history entry instead of pushing it,
and drops a value it cannot read without a word: neither suits a link to a feature.)

Usage: `place.restore(page, fields)` before the page's widgets (their values come from session state: give
them no default), `place.remember(page, fields)` after them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from core.feature_ids import FeatureIdError, parse_arm, parse_feature_id

_WRITTEN = "_place_url_{}"  # the query this page wrote last
KEPT_PARAMS = ("annotator",)  # parameters of every page, not of a place (dashboard.labels_widgets): kept as they are
_SAVED = "_place_values_{}"  # widget key -> value at the end of this page's last run


@dataclass(frozen=True)
class Field:
    """One piece of a page's place: a widget's session-state key and its name in the URL.

    parse(text, place) reads the URL's text (place: the values of the fields before it, by key, e.g. the arm
    whose range a feature id must fall in) and raises FeatureIdError or ValueError with a one-line reason."""

    key: str
    param: str
    default: Any
    parse: Callable[[str, dict[str, Any]], Any] = lambda text, place: text
    show: Callable[[Any], str] = str
    always: bool = False  # in the URL even at its default (a feature page's URL always names the feature)
    omit: Callable[[dict[str, Any]], bool] = lambda values: False  # left out of the URL when true of the place


class BadLink(Exception):
    """A URL whose place cannot be read: the message is one line, naming the parameter where it helps."""


def feature_fields(arm_key: str, feature_key: str, widths: dict[str, int], default_arm: str,
                   arm_param: str = "arm", feature_param: str = "feature") -> list[Field]:
    """An arm and one of its feature ids, both always in the URL; the id is checked against that arm's range."""
    arms = list(widths)
    return [Field(arm_key, arm_param, default_arm, lambda text, place: parse_arm(text, arms), always=True),
            Field(feature_key, feature_param, 0, always=True,
                  parse=lambda text, place: parse_feature_id(text, place[arm_key], widths[place[arm_key]]))]


def pair_field(key: str, pairs: list[tuple[str, str]], param: str = "pair") -> Field:
    """One of the study's declared pairs, as `base-finetuned` in the URL (arm names hold no '-'); the first is the
    default."""
    def parse(text: str, place: dict[str, Any]) -> tuple[str, str]:
        pair = tuple(text.split("-", 1))
        if pair not in pairs:
            raise ValueError(f"no such pair; the study's pairs are {', '.join(map(show_pair, pairs))}")
        return pair  # type: ignore[return-value]

    return Field(key, param, pairs[0], parse, show_pair)


def show_pair(pair: tuple[str, str]) -> str:
    return "-".join(pair)


# --- links: one function per page builds its URL (a LinkColumn's, a markdown link's, a page_link's) --------

@dataclass(frozen=True)
class Link:
    """A page of the app (its file, for st.page_link / st.switch_page) and its URL's parameters."""

    page: str
    params: dict[str, str]

    @property
    def url(self) -> str:
        """The absolute URL (each page's url_path is its file's stem, as app.py declares it)."""
        return f"/{Path(self.page).stem}" + (f"?{urlencode(self.params)}" if self.params else "")


def feature_link(arm: str, feature: int) -> Link:
    return Link("views/feature.py", {"arm": arm, "feature": str(int(feature))})


def feature_url(arm: str, feature: int) -> str:
    """/feature?arm=base&feature=12: the Feature page of one feature."""
    return feature_link(arm, feature).url


def compare_link(left_arm: str, left_feature: int, right_arm: str | None = None,
                 right_feature: int | None = None) -> Link:
    """The Compare page with these two features side by side (the right one left to choose when None)."""
    params = {"left_arm": left_arm, "left_feature": str(int(left_feature))}
    if right_arm is not None:
        params["right_arm"] = right_arm
    if right_feature is not None:
        params["right_feature"] = str(int(right_feature))
    return Link("views/compare.py", params)


def compare_url(left_arm: str, left_feature: int, right_arm: str, right_feature: int) -> str:
    return compare_link(left_arm, left_feature, right_arm, right_feature).url


def steer_link(arm: str, feature: int) -> Link:
    return Link("views/steer.py", {"arm": arm, "feature": str(int(feature))})


def steer_url(arm: str, feature: int) -> str:
    return steer_link(arm, feature).url


def diff_url(pair: tuple[str, str]) -> str:
    """The Model diff page of one declared pair."""
    return Link("views/diff.py", {"pair": show_pair(pair)}).url


def inspect_url(**params: Any) -> str:
    """The Inspect page (relative: it sits in HTML anchors) with any of row, token, text, feature ("arm:id"),
    base, finetuned."""
    return "inspect?" + urlencode({name: value if isinstance(value, str) else int(value)
                                   for name, value in params.items()})


def page_link(container: Any, link: Link, label: str, icon: str | None = None) -> None:
    """st.page_link to `link` in `container` (st or a column)."""
    container.page_link(link.page, label=label, icon=icon, query_params=link.params)


def switch_to(link: Link) -> None:
    """Open `link`'s page now (st.switch_page)."""
    st.switch_page(link.page, query_params=link.params)


FEATURES = Link("views/features.py", {})
LABEL = Link("views/label.py", {})
DIFF = Link("views/diff.py", {})


# --- the page's own changes to its place (every session-state write of a page goes through these) -------------

def clamp(key: str, low: Any, high: Any) -> Any:
    """Keep a widget's value within [low, high] before it is drawn (another arm's SAE may be narrower, a filter
    may have shrunk the pages) and return it."""
    value = min(max(st.session_state[key], low), high)
    st.session_state[key] = value
    return value


def change(values: dict[str, Any]) -> None:
    """Set widgets' values (key -> value) before they are drawn: a corpus row's text filled in, a new run that
    starts at its first token, filters back at their defaults."""
    for key, value in values.items():
        st.session_state[key] = value


def mirror(source: str, target: str) -> None:
    """A callback: one value shown by two widgets (a number box and a slider) follows the one just changed."""
    st.session_state[target] = st.session_state[source]


def keep(key: str, value: Any) -> Any:
    """Keep a result across reruns (the last Generate's texts, a running sweep) and return it."""
    st.session_state[key] = value
    return value


def values(fields: Sequence[Field]) -> dict[str, Any]:
    """The widgets' values (key -> value) of a page's place."""
    return {f.key: st.session_state[f.key] for f in fields}


def kept(key: str, default: Any = None) -> Any:
    return st.session_state.get(key, default)


def _url(fields: Sequence[Field]) -> dict[str, str]:
    return {f.param: st.query_params[f.param] for f in fields if f.param in st.query_params}


def from_url(fields: Sequence[Field], url: dict[str, str]) -> dict[str, Any]:
    """Widget key -> value for a URL; a field the URL leaves out takes its default."""
    place: dict[str, Any] = {}
    for f in fields:
        if f.param not in url:
            place[f.key] = f.default
            continue
        try:
            place[f.key] = f.parse(url[f.param], place)
        except FeatureIdError as err:
            raise BadLink(str(err)) from err
        except ValueError as err:
            raise BadLink(f"{f.param}={url[f.param]!r} in the link: {err}") from err
    return place


def restore(page: str, fields: Sequence[Field]) -> None:
    """Set the page's widgets from a URL that came from outside, else from this session's last place on the page
    (only widgets whose state Streamlit dropped: a widget the user just changed keeps its value). Raises BadLink
    for a URL that names nothing, before any widget is touched."""
    url = _url(fields)
    if url and url != st.session_state.get(_WRITTEN.format(page)):
        for key, value in from_url(fields, url).items():
            st.session_state[key] = value
        return
    saved = st.session_state.get(_SAVED.format(page), {})
    for f in fields:
        if f.key not in st.session_state:
            st.session_state[f.key] = saved.get(f.key, f.default)


def restore_or_stop(page: str, fields: Sequence[Field]) -> None:
    """restore(), and for a link that points nowhere one error line and nothing else on the page."""
    try:
        restore(page, fields)
    except BadLink as err:
        st.error(str(err))
        st.stop()


def query(fields: Sequence[Field], values: dict[str, Any]) -> dict[str, str]:
    """The URL's query for a place: fields at their default left out unless `always`."""
    return {f.param: f.show(values[f.key]) for f in fields
            if (f.always or values[f.key] != f.default) and not f.omit(values)}


def href(page: str, fields: Sequence[Field], changes: dict[str, Any]) -> str:
    """A relative link to the page at the current place with some widgets' values changed (key -> value)."""
    values = {f.key: st.session_state[f.key] for f in fields} | changes
    return f"{page}?{urlencode(query(fields, values))}"


def remember(page: str, fields: Sequence[Field]) -> None:
    """Keep the widgets' values for the next visit and put them in the URL (a new history entry if it changed)."""
    values = {f.key: st.session_state[f.key] for f in fields}
    st.session_state[_SAVED.format(page)] = values
    wanted = query(fields, values)
    shared = {param: st.query_params[param] for param in KEPT_PARAMS if param in st.query_params}
    if _url(fields) != wanted or len(st.query_params) != len(wanted) + len(shared):
        st.query_params.from_dict(wanted | shared)
    st.session_state[_WRITTEN.format(page)] = wanted
