"""The whole precompute of a study (every stage, `--fresh`) against the cost of its passes (issue 24): one bare
`transformers` forward of each of the study's models over the same tokens (the corpus rows, batch
`activations.batch_size`, fp32, no grad), timed in the same run; ratio = precompute / bare passes. Targets: ≤ 4×
on the demo, ≤ 3.5× on SmolLM2.

`python -m bench precompute` runs the demo's config (BENCH_PRECOMPUTE_CONFIG names another); the database is
written under a temporary folder, never over the study's. Skipped (no rows) when the config's models are not built.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch

from core.config import load_config
from core.corpus import load_corpus_rows
from core.models import load_hf_model
from precompute.run import run_study

CONFIG = os.environ.get("BENCH_PRECOMPUTE_CONFIG", "configs/demo.toml")


@torch.inference_mode()
def bare_forward_seconds(models: list[str], corpus, batch_size: int) -> tuple[float, int]:
    """Seconds of one bare forward of each model over the corpus rows, and the number of tokens."""
    seconds, n_tokens = 0.0, 0
    for model in dict.fromkeys(models):  # an arm that reuses a model runs it once in the precompute's passes too
        hf, tokenizer = load_hf_model(model)
        rows = load_corpus_rows(corpus, tokenizer)
        start = time.perf_counter()
        for first in range(0, rows.shape[0], batch_size):
            hf(rows[first:first + batch_size])
        seconds += time.perf_counter() - start
        n_tokens = rows.numel()
        del hf
    return seconds, n_tokens


def run() -> list[dict]:
    config = load_config(CONFIG)
    if not all(Path(arm.model).exists() for arm in config.arms):
        return []
    with tempfile.TemporaryDirectory(prefix="bench-precompute-") as folder:
        fresh = dataclasses.replace(config, features_db=str(Path(folder) / "features.duckdb"))
        start = time.perf_counter()
        report = run_study(fresh, fresh=True, show_progress=False)
        ours = time.perf_counter() - start
    bare, n_tokens = bare_forward_seconds([arm.model for arm in config.arms], config.corpus,
                                          config.activations.batch_size)
    rows = [{"name": f"precompute --fresh ({CONFIG}, {n_tokens:,} tokens)", "seconds": ours,
             "reference": "bare transformers forward of each model", "reference_seconds": bare, "ratio": ours / bare,
             "target_ratio": 4.0}]
    for scope, seconds in report.seconds.items():
        label = scope if isinstance(scope, str) else "→".join(scope)
        rows += [{"name": f"  {label}/{stage}", "seconds": value} for stage, value in seconds.items()]
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
