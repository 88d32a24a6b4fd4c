"""activations: one pass over the corpus: densities, histograms, top and interval contexts, unigram, LLR,
the tokens each feature fires on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import torch

from core.activations import (INTERVAL_EDGES, ActivationAccumulator, ActivationSummary, ContextSet, FiredTokens,
                              activation_pass, medical_llr)
from core.config import ActivationsConfig
from core.database.schema import CONTEXTS, FEATURE_ACTIVATIONS, FIRED_TOKENS, HISTOGRAMS, UNIGRAM
from core.loading import LoadedArm
from core.token_text import medical_token_mask
from precompute.inputs import StudyInputs
from precompute.stage import ShardedPass, Stage, StageResult


@dataclass(frozen=True)
class PassContext:
    """What a worker needs besides the loaded arm: the pass's settings and the medical tokens of its tokenizer."""

    config: ActivationsConfig
    medical_token: torch.Tensor  # [d_vocab] bool
    seed: int


def _context(inputs: StudyInputs, loaded: LoadedArm) -> PassContext:
    raw, _ = inputs.token_strings(loaded)
    return PassContext(inputs.config.activations, medical_token_mask(raw, inputs.medical_words), inputs.config.seed)


def _shard(loaded: LoadedArm, context: PassContext, rows: torch.Tensor, row_ids: torch.Tensor,
           progress: Callable = lambda it: it) -> ActivationAccumulator:
    return activation_pass(loaded.model, loaded.sae, loaded.hook_name, rows, row_ids, context.config,
                           context.medical_token, seed=context.seed, progress=progress)


def _finish(inputs: StudyInputs, loaded: LoadedArm, accumulator: ActivationAccumulator) -> StageResult:
    config = inputs.config
    summary = accumulator.result(inputs.corpus_rows(loaded))
    _, text = inputs.token_strings(loaded)
    name = loaded.name
    tables = {
        "feature_activations": _feature_activation_table(name, summary),
        "histograms": pa.table({"arm": pa.array([name] * loaded.d_sae),
                                "feature": np.arange(loaded.d_sae, dtype=np.int32),
                                "counts": pa.array(list(summary.hist_counts), pa.list_(pa.int64()))}),
        "contexts": pa.concat_tables([
            _context_table(name, "top", summary.top, None, text, config.activations.window_before),
            _context_table(name, "interval", summary.intervals, summary.interval_index, text,
                           config.activations.window_before)]),
        "unigram": _unigram_table(name, summary.unigram, text),
        "fired_tokens": _fired_tokens_table(name, summary.fired_tokens, text),
    }
    n_dead = int((summary.n_fired == 0).sum())
    metrics = {"n_tokens": summary.n_tokens, "n_medical_tokens": summary.n_medical_tokens,
               "l0_corpus": summary.n_fired.sum() / summary.n_tokens, "dead_features": n_dead,
               "dead_fraction": n_dead / loaded.d_sae}
    return tables, metrics


SHARDED = ShardedPass("activations", rows=lambda inputs, loaded: inputs.corpus_rows(loaded), context=_context,
                      shard=_shard, finish=_finish)


def run_activations(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    return SHARDED.run_whole(con, inputs, loaded)


def _feature_activation_table(arm: str, summary: ActivationSummary) -> pa.Table:
    def nullable(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=np.isnan(values))

    d_sae = len(summary.n_fired)
    return pa.table({
        "arm": pa.array([arm] * d_sae), "feature": np.arange(d_sae, dtype=np.int32), "n_fired": summary.n_fired,
        "frac_nonzero": summary.frac_nonzero, "max_act": summary.max_act, "mean_act": nullable(summary.mean_act),
        "var_act": nullable(summary.var_act), "sum_act": summary.sum_act, "sum_sq_act": summary.sum_sq_act,
        "med_fired": summary.med_fired, "llr": nullable(medical_llr(summary)),
    })


def _context_table(arm: str, kind: str, contexts: ContextSet, interval_index: np.ndarray | None,
                   text: np.ndarray, window_before: int) -> pa.Table:
    """One row per filled slot; windows trimmed to the row's tokens, so lists may be shorter at row edges."""
    d_sae, slots = contexts.row.shape
    feature, slot = np.nonzero(contexts.row >= 0)
    ids = contexts.window_token_ids[feature, slot]  # [n, W]
    acts = contexts.window_acts[feature, slot]
    inside = ids >= 0
    offsets = np.concatenate([[0], np.cumsum(inside.sum(1))]).astype(np.int32)
    flat_ids = ids[inside]
    if interval_index is None:
        rank, interval, low, high = slot, None, None, None
    else:
        interval = interval_index[slot]
        # rank within the interval by activation, strongest first
        order = np.lexsort((-contexts.max_act[feature, slot], interval, feature))
        rank = np.empty(len(order), dtype=np.int64)
        group_start = np.r_[True, (feature[order][1:] != feature[order][:-1]) | (interval[order][1:] != interval[order][:-1])]
        starts = np.maximum.accumulate(np.where(group_start, np.arange(len(order)), 0))
        rank[order] = np.arange(len(order)) - starts
        low, high = INTERVAL_EDGES[interval], INTERVAL_EDGES[interval + 1]
    return pa.table({
        "arm": pa.array([arm] * len(feature)), "feature": feature.astype(np.int32), "kind": pa.array([kind] * len(feature)),
        "rank": np.asarray(rank, dtype=np.int32),
        "interval": pa.array(interval, pa.int32()) if interval is not None else pa.nulls(len(feature), pa.int32()),
        "interval_low": pa.array(low, pa.float64()) if low is not None else pa.nulls(len(feature), pa.float64()),
        "interval_high": pa.array(high, pa.float64()) if high is not None else pa.nulls(len(feature), pa.float64()),
        "max_act": contexts.max_act[feature, slot], "row_index": contexts.row[feature, slot].astype(np.int32),
        "max_pos": contexts.max_pos[feature, slot].astype(np.int32),
        "max_index": inside[:, :window_before].sum(1).astype(np.int32),
        "token_ids": pa.ListArray.from_arrays(offsets, pa.array(flat_ids.astype(np.int32))),
        "tokens": pa.ListArray.from_arrays(offsets, pa.array(text[flat_ids].tolist(), pa.string())),
        "acts": pa.ListArray.from_arrays(offsets, pa.array(acts[inside].astype(np.float32))),
    })


def _unigram_table(arm: str, counts: np.ndarray, text: np.ndarray) -> pa.Table:
    ids = np.nonzero(counts)[0]
    return pa.table({"arm": pa.array([arm] * len(ids)), "token_id": ids.astype(np.int32),
                     "token": pa.array(text[ids].tolist(), pa.string()), "count": counts[ids]})


def _fired_tokens_table(arm: str, fired: FiredTokens, text: np.ndarray) -> pa.Table:
    feature, rank = np.nonzero(fired.token_id >= 0)
    ids = fired.token_id[feature, rank]
    return pa.table({"arm": pa.array([arm] * len(ids)), "feature": feature.astype(np.int32),
                     "rank": rank.astype(np.int32), "token_id": ids.astype(np.int32),
                     "token": pa.array(text[ids].tolist(), pa.string()), "count": fired.count[feature, rank],
                     "sum_act": fired.sum_act[feature, rank]})


# version 2: interval samples per firing token, fired_tokens
STAGE = Stage("activations", version=2, scope="arm",
              tables=(FEATURE_ACTIVATIONS, HISTOGRAMS, CONTEXTS, UNIGRAM, FIRED_TOKENS), run=run_activations,
              key_parts=lambda p: (p.arm, p.corpus, p.config.activations, p.vocabulary, p.config.seed),
              tokens=lambda config: 0, sharded=SHARDED)
