"""The reads an LLM summary of a pair is built from (precompute.explain.summary.pair_facts), as one typed record:
the What changed page passes its cached reads (dashboard.pair_summary), the command line a connection's
(`on_connection`). Each returns None where the database was built without the stage that writes its table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd

from core.database import changed_queries, diff_queries, pair_queries

Pair = tuple[str, str]


@dataclass(frozen=True)
class PairFactReads:
    lens_sites: Callable[[Pair], pd.DataFrame | None]
    lens_tokens: Callable[[Pair, str, str, str], pd.DataFrame | None]  # pair, hook_name, kind, unembed_arm
    changed_features: Callable[[Pair, str, int, str | None], pd.DataFrame | None]  # direction, limit, control
    fate_statistics: Callable[[Pair], pd.DataFrame | None]
    top_texts: Callable[[str, tuple[int, ...]], dict[int, str] | None]
    divergent_contexts: Callable[[str, str, int], pd.DataFrame | None]  # arm_a, arm_b, limit
    pair_controls: Callable[[], dict[Pair, dict[str, str | None]]]


def on_connection(con: duckdb.DuckDBPyConnection) -> PairFactReads:
    """The reads on an open database."""
    def bound(fn: Callable[..., Any]) -> Callable[..., Any]:
        def read(*args: Any) -> Any:
            try:
                return fn(con, *args)
            except duckdb.CatalogException:
                return None
        return read

    return PairFactReads(
        lens_sites=bound(changed_queries.lens_sites), lens_tokens=bound(changed_queries.lens_tokens),
        changed_features=bound(changed_queries.changed_features), fate_statistics=bound(diff_queries.fate_statistics),
        top_texts=bound(pair_queries.top_texts), divergent_contexts=bound(pair_queries.divergent_contexts),
        pair_controls=bound(diff_queries.pair_controls))
