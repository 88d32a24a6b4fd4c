"""quality: L0, explained variance, CE loss spliced and zero-ablated, and the median activation norm at the
hook (the Steer page's scale), on an even sample of the corpus. Metrics only, no table."""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import torch

from core.loading import LoadedArm
from core.sae_metrics import QualityAccumulator, quality_pass
from precompute.inputs import StudyInputs
from precompute.stage import ShardedPass, Stage, StageResult


def _rows(inputs: StudyInputs, loaded: LoadedArm) -> torch.Tensor:
    return inputs.token_set(STAGE).select(inputs.corpus_rows(loaded))


def _shard(loaded: LoadedArm, batch_size: int, rows: torch.Tensor, row_ids: torch.Tensor,
           progress: Callable = lambda it: it) -> QualityAccumulator:
    return quality_pass(loaded.model, loaded.sae, loaded.hook_name, rows, batch_size, progress=progress)


def quality_result(inputs: StudyInputs, loaded: LoadedArm, accumulator: QualityAccumulator) -> StageResult:
    quality = accumulator.result()
    recon = quality.reconstruction
    return {}, {
        # The Steer page's scale for a coefficient, on the same tokens (BOS left out).
        "n_tokens": recon.n_tokens, "median_activation_norm": accumulator.median_norm(), "l0": recon.l0,
        "explained_variance": recon.explained_variance, "mse": recon.mse, "ce_loss_clean": quality.ce_loss_clean,
        "ce_loss_spliced": quality.ce_loss_spliced,
        "ce_loss_zero_ablation": quality.ce_loss_zero_ablation, "ce_loss_delta": quality.ce_loss_delta,
        "ce_loss_recovered": quality.ce_loss_recovered,
    }


SHARDED = ShardedPass("quality", rows=_rows, context=lambda inputs, loaded: inputs.config.activations.batch_size,
                      shard=_shard, finish=quality_result)


def run_quality(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    return SHARDED.run_whole(con, inputs, loaded)


# version 2: an even sample of every corpus file, not the first rows, and median_activation_norm
STAGE = Stage("quality", version=2, scope="arm", tables=(), run=run_quality,
              key_parts=lambda p: (p.arm, p.corpus, p.config.activations.quality_tokens),
              tokens=lambda config: config.activations.quality_tokens, sharded=SHARDED)
