"""similarity: cosine and distance between the two models' activations at the same hook, on the same tokens.

One planned token pass (PASSES, precompute.plan): both models' activations at arm a's hook fold any subset of the
pair's rows into an ActivationSimilarityAccumulator; the accumulators of disjoint shards merge, and `finish` turns
the merged one into the tables."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import torch

from core.database.schema import SIMILARITY_BY_POSITION, SIMILARITY_HIST
from core.model_diff import ActivationSimilarityAccumulator, collect_similarity
from precompute.pair import Pair, different_tokenizers, pair_key_parts, pair_tokens
from precompute.pair_pass import PairPasses
from precompute.plan import BatchReads, PlannedPass, Read
from precompute.stage import Stage, StageResult


def run_similarity(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    return PASSES.run_whole(pair)


def shard(pair: Pair, rows: torch.Tensor, earlier: None = None) -> ActivationSimilarityAccumulator:
    """Both models at arm a's hook over token rows [m, T] of the pair's rows (BOS first)."""
    return collect_similarity(pair.a.model, pair.b.model, pair.a.hook_name, rows, pair.batch_size,
                              progress=pair.progress("activation similarity"))


def _reads(pair: Pair) -> frozenset[Read]:
    return frozenset({Read("a", pair.a.hook_name), Read("b", pair.a.hook_name)})


def _update(pair: Pair, accumulator: ActivationSimilarityAccumulator, reads: BatchReads, context: None) -> None:
    hook = pair.a.hook_name
    accumulator.update(reads[Read("a", hook)][:, 1:], reads[Read("b", hook)][:, 1:])


PLANNED = PlannedPass(_reads, start=lambda pair, context: ActivationSimilarityAccumulator(context),
                      update=_update, context=lambda pair: pair.rows.shape[1] - 1)


def finish(pair: Pair, accumulator: ActivationSimilarityAccumulator) -> StageResult:
    """The tables and metrics over every row (one accumulator, or shards merged)."""
    result = accumulator.result()
    hist = []
    for kind, edges, counts in (("cosine", result.cosine_edges, result.cosine_hist),
                                ("distance", result.distance_edges, result.distance_hist)):
        hist.append(pa.table({**pair.columns(len(counts)), "kind": [kind] * len(counts),
                              "low": np.asarray(edges[:-1], np.float64), "high": np.asarray(edges[1:], np.float64),
                              "count": np.asarray(counts, np.int64)}))
    by_position = pa.table({**pair.columns(len(result.position)), "position": np.asarray(result.position),
                            "mean_cosine": np.asarray(result.mean_cosine_by_position, np.float64),
                            "mean_distance": np.asarray(result.mean_distance_by_position, np.float64)})
    metrics = {"n_tokens": result.n_tokens, "mean_cosine": result.mean_cosine, "mean_distance": result.mean_distance}
    return {"similarity_hist": pa.concat_tables(hist), "similarity_by_position": by_position}, metrics


def _skip_reason(pair: Pair) -> str | None:
    if pair.a.hook_name != pair.b.hook_name and pair.same_tokenizer():
        return f"the SAEs read different hooks ({pair.a.hook_name} vs {pair.b.hook_name}); similarity skipped"
    return different_tokenizers(pair, "similarity")


PASSES = PairPasses((PLANNED,), finish)

STAGE = Stage("similarity", version=2, scope="pair", tables=(SIMILARITY_HIST, SIMILARITY_BY_POSITION),
              run=run_similarity, key_parts=pair_key_parts, tokens=pair_tokens, skip_reason=_skip_reason,
              passes=PASSES)
