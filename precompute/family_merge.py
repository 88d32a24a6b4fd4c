"""The family's merge step: sweep SLERP's t between fine-tunes A and B, choose the t of equal held-out accuracy,
and write that merge (Horn & Elliott §3.3 and Figure 5). Orchestration only: the merge is core.merge (mergekit),
the accuracy and the choice core.merge_curve."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from core.merge import check_mergeable, slerp_merge
from core.merge_curve import SlerpCurve, next_token_accuracy, t_grid, write_curve

logger = logging.getLogger(__name__)


def _accuracies(folder: Path, rows_a: torch.Tensor, rows_b: torch.Tensor, device: str, batch_size: int,
                special_ids: tuple[int, ...] | None) -> tuple[float, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder)).float()
    return (next_token_accuracy(model, rows_a, device, batch_size, special_ids),
            next_token_accuracy(model, rows_b, device, batch_size, special_ids))


def sweep_slerp(model_a: Path, model_b: Path, rows_a: torch.Tensor, rows_b: torch.Tensor,
                domains: tuple[str, str], base: Path | None = None, ts: Sequence[float] | None = None,
                device: str = "cpu", batch_size: int = 32, special_ids: Iterable[int] | None = None) -> SlerpCurve:
    """Held-out next-token accuracy on domain A's rows and domain B's rows [n, ctx] of the SLERP merge at each t
    (default 0, 0.1, ..., 1; t = 0 is model A, so its ends are the fine-tunes themselves), and of `base`."""
    check_mergeable(Path(model_a), Path(model_b))  # one line before eleven merges, not after the first
    ts = list(ts) if ts is not None else t_grid(0.1)
    special = tuple(special_ids) if special_ids is not None else None
    acc_a, acc_b = [], []
    with tempfile.TemporaryDirectory(prefix="slerp_sweep_") as scratch:
        for t in ts:
            merged = slerp_merge(model_a, model_b, t, Path(scratch) / "merged")
            a, b = _accuracies(merged, rows_a, rows_b, device, batch_size, special)
            acc_a.append(a)
            acc_b.append(b)
            logger.info("SLERP t=%.2f: accuracy %s %.4f, %s %.4f", t, domains[0], a, domains[1], b)
            shutil.rmtree(merged)
    base_a = base_b = None
    if base is not None:
        base_a, base_b = _accuracies(Path(base), rows_a, rows_b, device, batch_size, special)
    return SlerpCurve(domains[0], domains[1], ts, acc_a, acc_b, base_a, base_b)


def merge_at_equal_accuracy(model_a: Path, model_b: Path, out: Path, rows_a: torch.Tensor, rows_b: torch.Tensor,
                            domains: tuple[str, str], base: Path | None = None,
                            ts: Sequence[float] | None = None, device: str = "cpu", batch_size: int = 32,
                            special_ids: Iterable[int] | None = None) -> SlerpCurve:
    """Sweep, then merge at the chosen t into `out` with `slerp_curve.json` and mergekit's YAML beside it."""
    curve = sweep_slerp(model_a, model_b, rows_a, rows_b, domains, base, ts, device, batch_size, special_ids)
    if not curve.chosen.crossed:
        logger.warning("the accuracies of %s and %s never cross on the SLERP grid; merging at t=%.2f, where they "
                       "are closest", *domains, curve.chosen.t)
    slerp_merge(model_a, model_b, curve.chosen.t, out)
    write_curve(curve, out)
    return curve
