"""transfer: each SAE on its own model and on the other one (quality, densities, their log correlation)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from core.database.schema import TRANSFER_DENSITIES, TRANSFER_METRICS
from core.model_diff import log_density_correlation, sae_transfer
from precompute.pair import Pair, pair_key_parts, pair_tokens
from precompute.stage import Stage, StageResult


def run_transfer(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    """Each SAE on its own model and on the other model, with the same outlier filter, and the correlation of
    its log10 feature densities on the two models."""
    rows, densities, metrics = [], [], {}
    for sae_arm in (pair.a, pair.b):
        own = None
        for model_arm in (sae_arm, pair.b if sae_arm is pair.a else pair.a):
            transfer = sae_transfer(model_arm.model, sae_arm.sae, sae_arm.hook_name, pair.rows, pair.outlier_factor,
                                    pair.batch_size, progress=pair.progress(f"SAE {sae_arm.name} on {model_arm.name}"))
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
            if own is None:
                own = transfer.density
            else:
                corr = log_density_correlation(own, transfer.density)
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


STAGE = Stage("transfer", version=2, scope="pair", tables=(TRANSFER_METRICS, TRANSFER_DENSITIES),
              run=run_transfer, key_parts=pair_key_parts, tokens=pair_tokens, skip_reason=_skip_reason)
