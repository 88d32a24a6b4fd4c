"""divergence: where the pair's next-token predictions part over the diff's token sample: per row mean / max
KL(a ‖ b) over its text positions, the top rows with every token's KL, Δ log p and kind, and each arm's features on
the top 1% most divergent text tokens against the other text tokens (core.divergence says what is kept and why it
is bounded). Boundary positions (those that predict a separator or one of a document's first `diff.boundary_tokens`
tokens, core.boundaries) are ranked nowhere and reported apart in the metrics: how many, their mean KL against the
text's, and their share of the top 1% of all positions by KL."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from core.boundaries import boundary_mask, special_token_ids
from core.database.schema import DIVERGENCE_CONTEXTS, DIVERGENCE_FEATURES, DIVERGENCE_ROWS
from core.divergence import Divergence, DivergenceAccumulator, divergent_count, residual_divergence
from core.token_text import vocabulary_strings
from precompute.pair import Pair, different_tokenizers, pair_key_parts, pair_tokens
from precompute.pair_pass import PairPasses
from precompute.plan import BatchReads, PlannedPass, Read
from precompute.stage import Stage, StageResult

TOP_CONTEXTS = 50  # rows kept with every token's KL: what the Model diff page lists
DIVERGENT_SHARE = 0.01  # the divergent tokens: this share of all positions, highest KL first


def run_divergence(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    return PASSES.run_whole(pair)


@dataclass(frozen=True)
class DivergenceContext:
    """What every shard needs from all of the pair's rows: their corpus ids and the sizes of the top sets."""

    row_ids: np.ndarray  # int64 [n]: the corpus row of each of the pair's rows
    n_divergent: int  # text positions in the divergent set
    n_top: int  # positions in the top set over all of them
    special_ids: tuple[int, ...]
    boundary_tokens: int


def _context(pair: Pair) -> DivergenceContext:
    special = tuple(special_token_ids(pair.a.model.tokenizer))
    boundary = boundary_mask(pair.rows, special, pair.boundary_tokens)
    n_positions = boundary.numel()
    n_text = n_positions - int(boundary.sum())
    row_ids = np.asarray(pair.row_ids if pair.row_ids else range(pair.rows.shape[0]), np.int64)
    return DivergenceContext(row_ids, divergent_count(n_text, DIVERGENT_SHARE), divergent_count(n_positions,
                             DIVERGENT_SHARE), special, pair.boundary_tokens)


def _reads(pair: Pair) -> frozenset[Read]:
    return frozenset({Read("a"), Read("b"), Read("a", pair.a.hook_name), Read("b", pair.b.hook_name)})


def _start(pair: Pair, context: DivergenceContext) -> DivergenceAccumulator:
    return DivergenceAccumulator(TOP_CONTEXTS, context.n_divergent, (pair.a.d_sae, pair.b.d_sae), context.n_top)


def _update(pair: Pair, accumulator: DivergenceAccumulator, reads: BatchReads, context: DivergenceContext) -> None:
    a, b, batch = pair.a, pair.b, reads.rows
    residual_a = reads[Read("a")]
    kl, change = residual_divergence(a.model, residual_a, b.model, reads[Read("b")].to(residual_a.device), batch)
    acts = [arm.sae.encode(reads[Read(side, arm.hook_name)][:, 1:].to(arm.sae.W_dec.device))
            for side, arm in (("a", a), ("b", b))]
    accumulator.update(context.row_ids[reads.positions], batch, kl, change, *acts,
                       boundary_mask(batch, context.special_ids, context.boundary_tokens))


PLANNED = PlannedPass(_reads, _start, _update, _context)


def finish(pair: Pair, accumulator: DivergenceAccumulator) -> StageResult:
    """The tables and metrics over every row (one accumulator, or shards merged)."""
    result = accumulator.result()
    _, text = vocabulary_strings(pair.a.model.tokenizer, pair.a.model.cfg.d_vocab)
    n_rows = len(result.row)
    tables = {
        "divergence_rows": pa.table({**pair.columns(n_rows), "row_index": result.row.astype(np.int32),
                                     "mean_kl": _nullable(result.row_mean_kl), "max_kl": _nullable(result.row_max_kl),
                                     "max_index": result.row_max_index.astype(np.int32)}),
        "divergence_contexts": _contexts_table(pair, result, text),
        "divergence_features": pa.concat_tables([_features_table(pair, arm, k, result)
                                                 for k, arm in enumerate((pair.a, pair.b))]),
    }
    bounds = result.boundaries
    metrics = {"n_tokens": result.n_positions, "mean_kl": result.mean_kl, "n_divergent": result.n_divergent,
               "divergent_threshold": result.divergent_threshold, "divergent_share": DIVERGENT_SHARE,
               "max_kl": float(np.nanmax(result.row_max_kl)) if np.isfinite(result.row_max_kl).any() else float("nan"),
               "boundary_tokens": pair.boundary_tokens, "n_boundary": bounds.n_boundary,
               "boundary_share": bounds.boundary_share, "mean_kl_text": bounds.mean_kl_text,
               "mean_kl_boundary": bounds.mean_kl_boundary, "boundary_share_of_top": bounds.boundary_share_of_top}
    return tables, metrics


def _contexts_table(pair: Pair, result: Divergence, text: np.ndarray) -> pa.Table:
    ctx = result.contexts
    n, width = ctx.token_ids.shape

    def lists(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        offsets = np.arange(0, n * width + 1, width, dtype=np.int32)
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), kind, from_pandas=True))

    ids = ctx.token_ids.astype(np.int64)
    max_kl, max_index = ctx.text_max()
    return pa.table({
        **pair.columns(n), "rank": np.arange(n, dtype=np.int32), "row_index": ctx.row.astype(np.int32),
        "mean_kl": _nullable(ctx.mean_kl), "max_kl": _nullable(max_kl),  # null: the row has no text position
        "max_index": max_index.astype(np.int32),
        "token_ids": lists(ids.astype(np.int32), pa.int32()),
        "tokens": lists(text[ids.reshape(-1)].astype(object) if n else np.zeros(0, object), pa.string()),
        "kl": lists(ctx.kl.astype(np.float32), pa.float32()),
        "logprob_change": lists(ctx.logprob_change.astype(np.float32), pa.float32()),  # NaN (last token) -> null
        "boundary": lists(ctx.boundary.astype(bool), pa.bool_()),
    })


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=np.isnan(values))  # NaN (nothing to average) -> null


def _features_table(pair: Pair, arm, k: int, result: Divergence) -> pa.Table:
    e = result.enrichment[k]
    d_sae = len(e.mean_elsewhere)
    return pa.table({**pair.columns(d_sae), "arm": [arm.name] * d_sae, "feature": np.arange(d_sae, dtype=np.int32),
                     "mean_divergent": _nullable(e.mean_divergent), "mean_elsewhere": _nullable(e.mean_elsewhere),
                     "fired_divergent": e.fired_divergent, "fired_elsewhere": e.fired_elsewhere})


def _skip_reason(pair: Pair) -> str | None:
    if pair.a.model.cfg.d_vocab != pair.b.model.cfg.d_vocab:
        return (f"the models' vocabularies differ in size ({pair.a.model.cfg.d_vocab} vs {pair.b.model.cfg.d_vocab}), "
                "so their next-token distributions cannot be compared (divergence skipped)")
    return different_tokenizers(pair, "divergence")


def _key_parts(parts) -> tuple:
    return (*pair_key_parts(parts), TOP_CONTEXTS, DIVERGENT_SHARE)


PASSES = PairPasses((PLANNED,), finish)

# 2: boundary positions (issue 22) ranked nowhere, reported apart; contexts keep each token's kind
STAGE = Stage("divergence", version=2, scope="pair",
              tables=(DIVERGENCE_ROWS, DIVERGENCE_CONTEXTS, DIVERGENCE_FEATURES), run=run_divergence,
              key_parts=_key_parts, tokens=pair_tokens, skip_reason=_skip_reason, passes=PASSES)
