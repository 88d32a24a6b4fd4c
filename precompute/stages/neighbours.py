"""neighbours: each feature's nearest features by decoder cosine, in its own SAE (an arm stage) and in the
other arm's SAE (a pair stage: meaningful when both arms read the same residual basis, as a fine-tune does).

Activation correlation, the other kind of similarity, is not recomputed here: the matching stage stores every
pair at or above its threshold (match_pairs), and the dashboard reads it beside these."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from core.database.schema import CROSS_NEIGHBOURS, FEATURE_NEIGHBOURS
from core.loading import LoadedArm
from core.neighbours import Neighbours, decoder_neighbours
from precompute.inputs import StudyInputs
from precompute.pair import Pair
from precompute.stage import KeyParts, Stage, StageResult

K = 10  # neighbours kept per feature (issue 16)


def run_neighbours(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    found = decoder_neighbours(loaded.sae.W_dec, k=K)
    table = pa.table({"arm": [loaded.name] * found.ids.size, **_rank_columns(found)})
    return {"feature_neighbours": table}, {"k": found.ids.shape[1], "mean_nearest_cosine": _mean_nearest(found)}


def run_cross_neighbours(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    parts, metrics = [], {}
    for arm, other in ((pair.a, pair.b), (pair.b, pair.a)):
        found = decoder_neighbours(arm.sae.W_dec, other.sae.W_dec.to(arm.sae.W_dec.device), k=K)
        n = found.ids.size
        parts.append(pa.table({**pair.columns(n), "arm": [arm.name] * n, **_rank_columns(found),
                               "neighbour_arm": [other.name] * n}))
        metrics[f"mean_nearest_cosine_{arm.name}"] = _mean_nearest(found)
    return {"cross_neighbours": pa.concat_tables(parts).select(CROSS_NEIGHBOURS.schema.names)}, metrics


def _rank_columns(found: Neighbours) -> dict[str, np.ndarray]:
    d_sae, k = found.ids.shape
    return {"feature": np.repeat(np.arange(d_sae, dtype=np.int32), k),
            "rank": np.tile(np.arange(k, dtype=np.int32), d_sae),
            "neighbour": found.ids.ravel().astype(np.int32), "cosine": found.cosine.ravel()}


def _mean_nearest(found: Neighbours) -> float:
    return float(found.cosine[:, 0].mean()) if found.cosine.size else float("nan")


def different_widths(pair: Pair, stage: str) -> str | None:
    """Decoder directions of two SAEs compare only in one residual space (the same d_in)."""
    d_a, d_b = pair.a.sae.cfg.d_in, pair.b.sae.cfg.d_in
    if d_a != d_b:
        return f"the SAEs read residuals of different widths ({d_a} vs {d_b}), so their decoders share no basis " \
               f"({stage} skipped)"
    return None


def weights_only(parts: KeyParts) -> tuple:
    """A decoder-only pair stage hashes both arms' weights, nothing of the corpus."""
    return (parts.fingerprints,)


STAGE = Stage("neighbours", version=1, scope="arm", tables=(FEATURE_NEIGHBOURS,), run=run_neighbours,
              key_parts=lambda p: (p.arm,))
CROSS_STAGE = Stage("cross_neighbours", version=1, scope="pair", tables=(CROSS_NEIGHBOURS,),
                    run=run_cross_neighbours, key_parts=weights_only,
                    skip_reason=lambda pair: different_widths(pair, "cross_neighbours"))
