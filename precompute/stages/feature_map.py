"""map: one 2-D UMAP layout of both arms' decoder directions together (core.feature_map), a point per feature."""

from __future__ import annotations

import importlib.metadata

import duckdb
import numpy as np
import pyarrow as pa

from core.database.schema import FEATURE_MAP
from core.feature_map import MapSettings, feature_layout
from precompute.pair import Pair
from precompute.stage import Stage, StageResult
from precompute.stages.neighbours import different_widths

SETTINGS = MapSettings()


def run_map(con: duckdb.DuckDBPyConnection, pair: Pair, settings: MapSettings = SETTINGS) -> StageResult:
    arms = (pair.a, pair.b)
    layout = feature_layout([arm.sae.W_dec for arm in arms], settings)
    widths = [arm.d_sae for arm in arms]
    n = layout.shape[0]
    table = pa.table({**pair.columns(n), "arm": [arm.name for arm, w in zip(arms, widths) for _ in range(w)],
                      "feature": np.concatenate([np.arange(w, dtype=np.int32) for w in widths]),
                      "x": layout[:, 0], "y": layout[:, 1]})
    return {"feature_map": table}, {"n_points": n, "n_neighbors": settings.n_neighbors, "seed": settings.seed}


def _umap_version() -> str:
    return importlib.metadata.version("umap-learn")  # another umap-learn may lay the same graph out otherwise


STAGE = Stage("map", version=1, scope="pair", tables=(FEATURE_MAP,), run=run_map,
              key_parts=lambda p: (p.fingerprints, SETTINGS, _umap_version()),
              skip_reason=lambda pair: different_widths(pair, "map"))
