"""domains: each feature's mean activation on medical text and on general text, and their ratio (issue 25's
proof that a per-feature measurement is one stage and one declaration): medical text is every corpus source (file)
whose name says "medical", general text the others, read on the quality stage's even sample (each file keeps its
share). The Features table shows, filters and sorts the ratio as declared in core.database.feature_fields."""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import numpy as np
import pyarrow as pa
import torch

from core.database.schema import TABLES
from core.hook_reads import features_at_hook
from core.loading import LoadedArm
from precompute.inputs import StudyInputs
from precompute.stage import Stage, StageResult

MEDICAL_SOURCE = "medical"  # a corpus source whose name holds this word is medical text


def domain_means(acts_by_batch: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """(mean activation per token on medical rows, on general rows) [d_sae] each, zeros included, from batches
    of (activations [B, T, d_sae], is_medical [B])."""
    sums = {True: 0.0, False: 0.0}
    tokens = {True: 0, False: 0}
    for acts, medical in acts_by_batch:
        for kind in (True, False):
            rows = acts[medical == kind]
            sums[kind] = sums[kind] + rows.double().sum((0, 1))
            tokens[kind] += rows.shape[0] * rows.shape[1]
    means = [np.asarray(sums[kind], dtype=np.float64) / max(tokens[kind], 1) for kind in (True, False)]
    return means[0], means[1]


def medical_ratio(medical: np.ndarray, general: np.ndarray) -> np.ndarray:
    """medical / general; +inf where it fires on medical text only, NaN (NULL) where on neither."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = medical / general
    return np.where((medical == 0) & (general == 0), np.nan, ratio)


def run_domains(con: duckdb.DuckDBPyConnection, inputs: StudyInputs, loaded: LoadedArm) -> StageResult:
    token_set = inputs.token_set(STAGE)
    rows = token_set.select(inputs.corpus_rows(loaded))
    medical = torch.tensor([MEDICAL_SOURCE in name.lower() for name, n in token_set.sources for _ in range(n)])
    if medical.all() or not medical.any():  # one domain only: nothing to set against
        return {"feature_domains": TABLES["feature_domains"].schema.empty_table()}, {"skipped": 1}
    batch = inputs.config.activations.batch_size
    progress = inputs.progress(f"{loaded.name} domains", "batch")

    def batches():
        for start in progress(range(0, rows.shape[0], batch)):
            yield features_at_hook(loaded.model, loaded.sae, loaded.hook_name, rows[start:start + batch]).cpu(), \
                medical[start:start + batch]

    on_medical, on_general = domain_means(batches())
    ratio = medical_ratio(on_medical, on_general)
    table = pa.table({"arm": [loaded.name] * loaded.d_sae, "feature": np.arange(loaded.d_sae, dtype=np.int32),
                      "mean_act_medical": on_medical, "mean_act_general": on_general,
                      "medical_ratio": pa.array(ratio, mask=np.isnan(ratio))})
    return {"feature_domains": table}, {"n_medical_rows": int(medical.sum()), "n_general_rows": int((~medical).sum())}


STAGE = Stage("domains", version=1, scope="arm", tables=(TABLES["feature_domains"],), run=run_domains,
              key_parts=lambda p: (p.arm, p.corpus, p.config.activations.quality_tokens),
              tokens=lambda config: config.activations.quality_tokens)
