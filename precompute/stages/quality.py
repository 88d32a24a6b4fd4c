"""quality: L0, explained variance, CE loss spliced and zero-ablated, and the median activation norm at the
hook (the Steer page's scale), on an even sample of the corpus. Metrics only, no table."""

from __future__ import annotations

import duckdb

from core.loading import LoadedArm
from core.model_diff import activation_norms
from core.sae_metrics import sae_quality
from precompute.inputs import StudyInputs
from precompute.stage import Stage, StageResult


def run_quality(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    rows = inputs.token_set(STAGE).select(inputs.corpus_rows(loaded))
    quality = sae_quality(loaded.model, loaded.sae, loaded.hook_name, rows, inputs.config.activations.batch_size,
                          progress=inputs.progress(f"{loaded.name} quality", "batch"))
    # The Steer page's scale for a coefficient, on the same tokens (BOS left out): one pass that stops at the hook.
    norms = activation_norms(loaded.model, loaded.hook_name, rows, inputs.config.activations.batch_size)
    recon = quality.reconstruction
    return {}, {
        "n_tokens": recon.n_tokens, "median_activation_norm": float(norms.median()), "l0": recon.l0,
        "explained_variance": recon.explained_variance, "mse": recon.mse, "ce_loss_clean": quality.ce_loss_clean,
        "ce_loss_spliced": quality.ce_loss_spliced,
        "ce_loss_zero_ablation": quality.ce_loss_zero_ablation, "ce_loss_delta": quality.ce_loss_delta,
        "ce_loss_recovered": quality.ce_loss_recovered,
    }


# version 2: an even sample of every corpus file, not the first rows, and median_activation_norm
STAGE = Stage("quality", version=2, scope="arm", tables=(), run=run_quality,
              key_parts=lambda p: (p.arm, p.corpus, p.config.activations.quality_tokens),
              tokens=lambda config: config.activations.quality_tokens)
