"""divergence: where the pair's next-token predictions part over the diff's token sample: per row mean / max
KL(a ‖ b), the top rows with every token's KL and Δ log p, and each arm's features on the top 1% most divergent
tokens against elsewhere (core.divergence says what is kept and why it is bounded)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from core.database.schema import DIVERGENCE_CONTEXTS, DIVERGENCE_FEATURES, DIVERGENCE_ROWS
from core.divergence import Divergence, corpus_divergence
from core.token_text import vocabulary_strings
from precompute.pair import Pair, different_tokenizers, pair_key_parts, pair_tokens
from precompute.stage import Stage, StageResult

TOP_CONTEXTS = 50  # rows kept with every token's KL: what the Model diff page lists
DIVERGENT_SHARE = 0.01  # the divergent tokens: this share of all positions, highest KL first
LOGIT_BUDGET = 2**25  # floats of one model's logits per batch (128 MiB): rows × positions × d_vocab


def run_divergence(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    rows = pair.rows
    per_batch = max(1, min(pair.batch_size, LOGIT_BUDGET // (rows.shape[1] * pair.a.model.cfg.d_vocab)))
    row_ids = pair.row_ids if pair.row_ids else range(rows.shape[0])
    result = corpus_divergence(pair.a, pair.b, rows, row_ids, TOP_CONTEXTS, DIVERGENT_SHARE, per_batch,
                               progress=pair.progress("next-token divergence"))
    _, text = vocabulary_strings(pair.a.model.tokenizer, pair.a.model.cfg.d_vocab)
    n_rows = len(result.row)
    tables = {
        "divergence_rows": pa.table({**pair.columns(n_rows), "row_index": result.row.astype(np.int32),
                                     "mean_kl": result.row_mean_kl, "max_kl": result.row_max_kl,
                                     "max_index": result.row_max_index.astype(np.int32)}),
        "divergence_contexts": _contexts_table(pair, result, text),
        "divergence_features": pa.concat_tables([_features_table(pair, arm, k, result)
                                                 for k, arm in enumerate((pair.a, pair.b))]),
    }
    metrics = {"n_tokens": result.n_positions, "mean_kl": result.mean_kl, "n_divergent": result.n_divergent,
               "divergent_threshold": result.divergent_threshold, "divergent_share": DIVERGENT_SHARE,
               "max_kl": float(result.row_max_kl.max()) if n_rows else float("nan")}
    return tables, metrics


def _contexts_table(pair: Pair, result: Divergence, text: np.ndarray) -> pa.Table:
    ctx = result.contexts
    n, width = ctx.token_ids.shape

    def lists(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), kind, from_pandas=True))

    ids = ctx.token_ids.astype(np.int64)
    return pa.table({
        **pair.columns(n), "rank": np.arange(n, dtype=np.int32), "row_index": ctx.row.astype(np.int32),
        "mean_kl": ctx.mean_kl, "max_kl": ctx.kl.max(1).astype(np.float64) if n else np.zeros(0),
        "max_index": ctx.kl.argmax(1).astype(np.int32) if n else np.zeros(0, np.int32),
        "token_ids": lists(ids.astype(np.int32), pa.int32()),
        "tokens": lists(text[ids.reshape(-1)].astype(object) if n else np.zeros(0, object), pa.string()),
        "kl": lists(ctx.kl.astype(np.float32), pa.float32()),
        "logprob_change": lists(ctx.logprob_change.astype(np.float32), pa.float32()),  # NaN (last token) -> null
    })


def _features_table(pair: Pair, arm, k: int, result: Divergence) -> pa.Table:
    e = result.enrichment[k]
    d_sae = len(e.mean_elsewhere)

    def nullable(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=np.isnan(values))

    return pa.table({**pair.columns(d_sae), "arm": [arm.name] * d_sae, "feature": np.arange(d_sae, dtype=np.int32),
                     "mean_divergent": nullable(e.mean_divergent), "mean_elsewhere": nullable(e.mean_elsewhere),
                     "fired_divergent": e.fired_divergent, "fired_elsewhere": e.fired_elsewhere})


def _skip_reason(pair: Pair) -> str | None:
    if pair.a.model.cfg.d_vocab != pair.b.model.cfg.d_vocab:
        return (f"the models' vocabularies differ in size ({pair.a.model.cfg.d_vocab} vs {pair.b.model.cfg.d_vocab}), "
                "so their next-token distributions cannot be compared (divergence skipped)")
    return different_tokenizers(pair, "divergence")


def _key_parts(parts) -> tuple:
    return (*pair_key_parts(parts), TOP_CONTEXTS, DIVERGENT_SHARE)


STAGE = Stage("divergence", version=1, scope="pair",
              tables=(DIVERGENCE_ROWS, DIVERGENCE_CONTEXTS, DIVERGENCE_FEATURES), run=run_divergence,
              key_parts=_key_parts, tokens=pair_tokens, skip_reason=_skip_reason)
