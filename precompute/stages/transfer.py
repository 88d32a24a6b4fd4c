"""transfer: each SAE on its own model and on the other one (quality, densities, their log correlation).

Two token passes (PASSES), each cut into shards of the pair's rows: the first (planned, precompute.plan: it shares
the pair's clean pass) samples every activation norm at each
SAE's hook on each model (NormSample; merged, their medians set the outlier filter), then `transfer_shard`
splices each SAE into each model (the SAEs at one hook of a model sharing its clean pass) with the positions above outlier_factor × that median left out
(TransferAccumulator). `finish` turns the merged accumulators into the tables."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import torch

from core.accumulator import AccumulatorMap
from core.database.schema import TRANSFER_DENSITIES, TRANSFER_METRICS
from core.loading import LoadedArm
from core.model_diff import NormSample, collect_norms, collect_transfers, log_density_correlation
from precompute.pair import Pair, pair_key_parts, pair_tokens
from precompute.pair_pass import PairPasses
from precompute.plan import BatchReads, PlannedPass, Read
from precompute.stage import Stage, StageResult


def run_transfer(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    """Each SAE on its own model and on the other model, with the same outlier filter, and the correlation of
    its log10 feature densities on the two models."""
    return PASSES.run_whole(pair)


def _combinations(pair: Pair) -> list[tuple[LoadedArm, LoadedArm]]:
    """(SAE arm, model arm): each SAE on its own model first, then on the other one."""
    return [(pair.a, pair.a), (pair.a, pair.b), (pair.b, pair.b), (pair.b, pair.a)]


def norm_shard(pair: Pair, rows: torch.Tensor, earlier: None = None) -> AccumulatorMap:
    """NormSample by (model arm, hook) over token rows [m, T] of the pair's rows: one pass per model and hook
    (two when both SAEs read the same hook), not one per SAE and model."""
    samples = AccumulatorMap()
    for sae_arm, model_arm in _combinations(pair):
        if (model_arm.name, sae_arm.hook_name) not in samples:
            samples[model_arm.name, sae_arm.hook_name] = collect_norms(model_arm.model, sae_arm.hook_name, rows,
                                                                       pair.batch_size)
    return samples


def _norm_reads(pair: Pair) -> dict[tuple[str, str], Read]:
    """The read behind each (model arm, hook) norm sample."""
    side = {pair.a.name: "a", pair.b.name: "b"}
    return {(model_arm.name, sae_arm.hook_name): Read(side[model_arm.name], sae_arm.hook_name)
            for sae_arm, model_arm in _combinations(pair)}


def _norm_update(pair: Pair, samples: AccumulatorMap, reads: BatchReads, context: None) -> None:
    for key, read in _norm_reads(pair).items():
        samples[key].update(reads[read][:, 1:].float().norm(dim=-1))


NORMS = PlannedPass(lambda pair: frozenset(_norm_reads(pair).values()),
                    start=lambda pair, context: AccumulatorMap({key: NormSample() for key in _norm_reads(pair)}),
                    update=_norm_update)


def transfer_shard(pair: Pair, rows: torch.Tensor, medians: dict[tuple[str, str], float]) -> AccumulatorMap:
    """TransferAccumulator by (SAE arm, model arm) over token rows [m, T]; `medians` by (model arm, hook) are
    the merged norm_shard results over every shard. The SAEs at one hook of one model share each batch's clean
    and zero-ablated pass (collect_transfers): 8 passes a batch for two models, not 12."""
    groups: dict[tuple[str, str], list[LoadedArm]] = {}
    models = {}
    for sae_arm, model_arm in _combinations(pair):
        groups.setdefault((model_arm.name, sae_arm.hook_name), []).append(sae_arm)
        models[model_arm.name] = model_arm
    accumulators = AccumulatorMap()
    for (model_name, hook_name), sae_arms in groups.items():
        names = " and ".join(arm.name for arm in sae_arms)
        transfers = collect_transfers(
            models[model_name].model, {arm.name: arm.sae for arm in sae_arms}, hook_name, rows,
            medians[model_name, hook_name], pair.outlier_factor, pair.batch_size,
            progress=pair.progress(f"SAE {names} on {model_name}"))
        for arm in sae_arms:
            accumulators[arm.name, model_name] = transfers[arm.name]
    return accumulators


def finish(pair: Pair, accumulators: AccumulatorMap) -> StageResult:
    """The tables and metrics over every row (one pass, or shards merged)."""
    transfers = accumulators.result()
    rows, densities, metrics = [], [], {}
    for sae_arm, model_arm in _combinations(pair):
        transfer = transfers[sae_arm.name, model_arm.name]
        q, r = transfer.quality, transfer.quality.reconstruction
        values = {"l0": r.l0, "explained_variance": r.explained_variance, "mse": r.mse,
                  "dead_fraction": float((transfer.density == 0).mean()), "ce_loss_clean": q.ce_loss_clean,
                  "ce_loss_spliced": q.ce_loss_spliced, "ce_loss_delta": q.ce_loss_delta,
                  "ce_loss_recovered": q.ce_loss_recovered, "n_outliers": transfer.n_outliers,
                  "outlier_fraction": transfer.outlier_fraction, "n_tokens": transfer.n_positions}
        rows += [(sae_arm.name, model_arm.name, name, float(value)) for name, value in values.items()]
        densities.append(pa.table({
            **pair.columns(len(transfer.density)), "sae_arm": [sae_arm.name] * len(transfer.density),
            "model_arm": [model_arm.name] * len(transfer.density),
            "feature": np.arange(len(transfer.density), dtype=np.int32), "frac_nonzero": transfer.density}))
        if model_arm is not sae_arm:
            corr = log_density_correlation(transfers[sae_arm.name, sae_arm.name].density, transfer.density)
            metrics[f"log_density_pearson_{sae_arm.name}"] = corr.pearson
            metrics[f"log_density_excluded_{sae_arm.name}"] = corr.n_excluded
    table = pa.table({**pair.columns(len(rows)), "sae_arm": [r[0] for r in rows],
                      "model_arm": [r[1] for r in rows], "metric": [r[2] for r in rows],
                      "value": [r[3] for r in rows]})
    return {"transfer_metrics": table, "transfer_densities": pa.concat_tables(densities)}, metrics


def _skip_reason(pair: Pair) -> str | None:
    if pair.a.sae.cfg.d_in != pair.b.sae.cfg.d_in:
        return f"the SAEs' d_in differ ({pair.a.sae.cfg.d_in} vs {pair.b.sae.cfg.d_in}); transfer skipped"
    return None


PASSES = PairPasses((NORMS, transfer_shard), finish)

STAGE = Stage("transfer", version=2, scope="pair", tables=(TRANSFER_METRICS, TRANSFER_DENSITIES),
              run=run_transfer, key_parts=pair_key_parts, tokens=pair_tokens, skip_reason=_skip_reason,
              passes=PASSES)
