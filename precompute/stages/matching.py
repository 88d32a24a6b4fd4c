"""matching: features of the two arms matched by activation correlation on the same tokens; each feature's
best match, status (persist / emerge / disappear / dead / rare), partners and one-to-one assignment, and feature i
against the other arm's feature i (the lineage of an SAE trained on from the other).

One planned token pass (PASSES, precompute.plan): each arm's SAE on its own model's hook sums any subset of the
pair's rows into a CoactivationAccumulator; the accumulators of disjoint shards merge, and `finish` turns the
merged one into the tables."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import torch

from core.database.schema import FEATURE_MATCHES, MATCH_PAIRS
from core.loading import LoadedArm
from core.match_assignment import assigned_partner, one_to_one
from core.matching import (CoactivationAccumulator, FeatureMatches, collect_coactivations, decoder_cosine,
                           logit_weight_similarity, match_features)
from precompute.pair import Pair, different_tokenizers, pair_key_parts, pair_tokens
from precompute.pair_pass import PairPasses
from precompute.plan import BatchReads, PlannedPass, Read
from precompute.stage import Stage, StageResult


def run_matching(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    return PASSES.run_whole(pair)


def shard(pair: Pair, rows: torch.Tensor, earlier: None = None) -> CoactivationAccumulator:
    """Both arms' SAE activations over token rows [m, T] of the pair's rows (BOS first), summed."""
    a, b = pair.a, pair.b
    return collect_coactivations(a.model, a.sae, a.hook_name, b.model, b.sae, b.hook_name, rows, pair.batch_size,
                                 device=a.sae.W_dec.device, progress=pair.progress("co-activations"))


def _reads(pair: Pair) -> frozenset[Read]:
    return frozenset({Read("a", pair.a.hook_name), Read("b", pair.b.hook_name)})


def _start(pair: Pair, context: None) -> CoactivationAccumulator:
    return CoactivationAccumulator(pair.a.d_sae, pair.b.d_sae, pair.a.sae.W_dec.device, torch.float64)


def _encode(arm: LoadedArm, acts: torch.Tensor) -> torch.Tensor:
    """[B × (T − 1), d_sae] feature activations of the arm's SAE for its hook's activations [B, T, d_in]."""
    feature_acts = arm.sae.encode(acts[:, 1:].to(arm.sae.W_dec.device))
    return feature_acts.reshape(-1, feature_acts.shape[-1])


def _update(pair: Pair, accumulator: CoactivationAccumulator, reads: BatchReads, context: None) -> None:
    accumulator.update(_encode(pair.a, reads[Read("a", pair.a.hook_name)]),
                       _encode(pair.b, reads[Read("b", pair.b.hook_name)]))


PLANNED = PlannedPass(_reads, _start, _update)


def finish(pair: Pair, coactivations: CoactivationAccumulator) -> StageResult:
    """The tables and metrics of the co-activations over every row (one accumulator, or shards merged)."""
    a, b = pair.a, pair.b
    matches = match_features(coactivations.result(), pair.threshold, min_firings=pair.min_firings,
                             device=a.sae.W_dec.device)
    pairs = matches.pairs
    kept = one_to_one(pairs.a, pairs.b, pairs.corr, a.d_sae, b.d_sae)
    partners = pairs.partner_counts(a.d_sae, b.d_sae)
    assigned = (assigned_partner(pairs.a, pairs.b, pairs.corr, kept, a.d_sae),
                assigned_partner(pairs.b, pairs.a, pairs.corr, kept, b.d_sae))
    tables = [_match_table(pair, side, matches, partners[k], assigned[k]) for k, side in enumerate("ab")]
    match_pairs = pa.table({
        "arm_a": [a.name] * len(kept), "feature_a": pairs.a.astype(np.int32), "arm_b": [b.name] * len(kept),
        "feature_b": pairs.b.astype(np.int32), "corr": pairs.corr, "assigned": kept})
    metrics = {name: float(value) for name, value in matches.counts().items()}
    metrics.update({"same_index_share_a": matches.same_index_share("a"),
                    "same_index_share_b": matches.same_index_share("b")})
    metrics.update({"threshold": pair.threshold, "n_tokens": matches.n_tokens, "min_firings": pair.min_firings,
                    "n_pairs": len(kept), "n_assigned": int(kept.sum()),
                    "assigned_corr_total": float(pairs.corr[kept].sum())})
    return {"feature_matches": pa.concat_tables(tables), "match_pairs": match_pairs}, metrics


def _match_table(pair: Pair, side: str, matches: FeatureMatches, n_partners: np.ndarray,
                 assigned: tuple[np.ndarray, np.ndarray]) -> pa.Table:
    """feature_matches rows of one arm: best match, status, decoder / logit similarity, partners, assignment."""
    arm, other = (pair.a, pair.b) if side == "a" else (pair.b, pair.a)
    match, corr = getattr(matches, f"{side}_match"), getattr(matches, f"{side}_corr")
    own_ids = np.arange(len(match))
    same_width = arm.sae.cfg.d_in == other.sae.cfg.d_in
    cos = decoder_cosine(arm.sae.W_dec, other.sae.W_dec, own_ids, match) if same_width else np.full(len(match), np.nan)
    logit = _logit_similarity(arm, other, own_ids, match) if pair.same_tokenizer() else np.full(len(match), np.nan)
    partner, partner_corr = assigned
    # feature i against the other arm's feature i (one SAE trained on from the other: one feature, maybe moved)
    same = np.full(len(match), np.nan, np.float32)
    same[:len(matches.same_index_corr)] = matches.same_index_corr
    n_both = min(len(match), other.d_sae)
    same_cos = np.full(len(match), np.nan, np.float32)
    if same_width:
        same_cos[:n_both] = decoder_cosine(arm.sae.W_dec, other.sae.W_dec, own_ids[:n_both], own_ids[:n_both])
    return pa.table({
        **pair.columns(len(match)), "arm": [arm.name] * len(match), "feature": own_ids.astype(np.int32),
        "match_arm": [other.name] * len(match), "match_feature": pa.array(np.where(match < 0, None, match), pa.int32()),
        "match_corr": pa.array(corr, mask=np.isnan(corr)),
        "status": pa.array(list(getattr(matches, f"{side}_status")), pa.string()),
        "decoder_cos": pa.array(cos, mask=np.isnan(cos)), "logit_sim": pa.array(logit, mask=np.isnan(logit)),
        "n_fired": np.asarray(getattr(matches, f"{side}_n_fired"), np.int64),
        "n_partners": np.asarray(n_partners, np.int32),
        "assigned_feature": pa.array(np.where(partner < 0, None, partner), pa.int32()),
        "assigned_corr": pa.array(partner_corr, mask=np.isnan(partner_corr)),
        "same_index_corr": pa.array(same, mask=np.isnan(same)),
        "same_index_cos": pa.array(same_cos, mask=np.isnan(same_cos))})


def _logit_similarity(arm: LoadedArm, other: LoadedArm, own: np.ndarray, match: np.ndarray) -> np.ndarray:
    return logit_weight_similarity(arm.sae.W_dec, arm.model.W_U, other.sae.W_dec, other.model.W_U, own, match)


PASSES = PairPasses((PLANNED,), finish)

# version 2: dead / rare statuses, every pair, the assignment; 3: same_index_corr / _cos, same_index_share
STAGE = Stage("matching", version=3, scope="pair", tables=(FEATURE_MATCHES, MATCH_PAIRS), run=run_matching,
              key_parts=pair_key_parts, tokens=pair_tokens, passes=PASSES,
              skip_reason=lambda pair: different_tokenizers(pair, "matching"))
