"""projection: each feature's top and bottom tokens by W_dec @ W_U (the paper's decoder projection)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from core.database.schema import TOP_TOKENS
from core.loading import LoadedArm
from core.projection import decoder_projection_topk
from precompute.inputs import StudyInputs
from precompute.stage import Stage, StageResult


def run_projection(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    k = inputs.config.projection.top_k
    result = decoder_projection_topk(loaded.sae.W_dec.detach(), loaded.model.W_U.detach(), k=k)
    _, text = inputs.token_strings(loaded)
    parts = []
    for kind, ids, values in (("top", result.top_ids, result.top_values),
                              ("bottom", result.bottom_ids, result.bottom_values)):
        d_sae, width = ids.shape
        parts.append(pa.table({
            "arm": pa.array([loaded.name] * ids.size), "feature": np.repeat(np.arange(d_sae, dtype=np.int32), width),
            "kind": pa.array([kind] * ids.size), "rank": np.tile(np.arange(width, dtype=np.int32), d_sae),
            "token_id": ids.ravel().astype(np.int32), "token": pa.array(text[ids.ravel()].tolist(), pa.string()),
            "value": values.ravel(),
        }))
    return {"top_tokens": pa.concat_tables(parts)}, {"top_k": k}


# version 2: byte tokens read <0x8F>, not "\ufffd"
STAGE = Stage("projection", version=2, scope="arm", tables=(TOP_TOKENS,), run=run_projection,
              key_parts=lambda p: (p.arm, p.config.projection))
