"""Choosing a SLERP merge's t the paper's way (Horn & Elliott §3.3, Figure 5): sweep t, measure each domain's
held-out next-token accuracy at each t, and take the t where the two accuracies are equal.

The curve is sampled on a grid (0 to 1 in steps of 0.1 by default); the equal point lies between two grid points
where the difference of the accuracies changes sign, and is found by linear interpolation of that difference. The
base model's accuracies on both domains are kept beside the curve as its baseline (the paper's dashed lines).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import StudyInputError


CURVE_FILE = "slerp_curve.json"  # beside the merged model


def t_grid(step: float = 0.1) -> list[float]:
    """0, step, 2 step, ..., 1 (rounded to 10 places, so 0.1 * 3 is 0.3)."""
    if not 0 < step <= 1:
        raise StudyInputError(f"the SLERP sweep's step {step} must be in (0, 1], e.g. 0.1 for 11 merges")
    count = round(1 / step)
    if not math.isclose(count * step, 1.0, abs_tol=1e-9):
        raise StudyInputError(f"the SLERP sweep's step {step} must divide 1 (0.1, 0.125, 0.25, ...)")
    return [round(i * step, 10) for i in range(count + 1)]


@dataclass(frozen=True)
class EqualPoint:
    t: float
    accuracy_a: float  # domain A's accuracy at t (interpolated between grid points)
    accuracy_b: float
    crossed: bool  # False: the curves never cross on the grid and t is the grid point where they are closest


def equal_accuracy_t(ts: Sequence[float], accuracy_a: Sequence[float], accuracy_b: Sequence[float]) -> EqualPoint:
    """The t where domain A's and domain B's accuracies are equal, interpolated linearly between grid points.

    Where they cross more than once, the crossing of highest accuracy wins; where they never cross, the grid point
    of smallest gap (crossed=False)."""
    if not (len(ts) == len(accuracy_a) == len(accuracy_b)) or len(ts) < 2:
        raise StudyInputError("the SLERP curve needs the same number (at least 2) of t values and accuracies")
    if any(later <= earlier for earlier, later in zip(ts, ts[1:])):
        raise StudyInputError("the SLERP curve's t values must increase")
    gap = [a - b for a, b in zip(accuracy_a, accuracy_b)]
    crossings = []
    for i in range(len(ts)):
        if gap[i] == 0:
            crossings.append(EqualPoint(ts[i], accuracy_a[i], accuracy_b[i], True))
        elif i + 1 < len(ts) and gap[i] * gap[i + 1] < 0:
            frac = gap[i] / (gap[i] - gap[i + 1])
            t = ts[i] + frac * (ts[i + 1] - ts[i])
            acc_a = accuracy_a[i] + frac * (accuracy_a[i + 1] - accuracy_a[i])
            acc_b = accuracy_b[i] + frac * (accuracy_b[i + 1] - accuracy_b[i])
            crossings.append(EqualPoint(t, acc_a, acc_b, True))
    if crossings:
        return max(crossings, key=lambda point: point.accuracy_a)
    i = min(range(len(ts)), key=lambda j: abs(gap[j]))
    return EqualPoint(ts[i], accuracy_a[i], accuracy_b[i], False)


@dataclass
class SlerpCurve:
    """What the sweep measured; plain values, stored as JSON beside the merged model (`slerp_curve.json`)."""

    domain_a: str  # the domain model A was fine-tuned on (t = 0 is model A)
    domain_b: str
    ts: list[float]
    accuracy_a: list[float]  # held-out next-token accuracy on domain A at each t
    accuracy_b: list[float]
    base_accuracy_a: float | None  # the shared base model's accuracy on each domain (the dashed baselines)
    base_accuracy_b: float | None
    chosen: EqualPoint = field(init=False)

    def __post_init__(self) -> None:
        self.chosen = equal_accuracy_t(self.ts, self.accuracy_a, self.accuracy_b)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SlerpCurve":
        return cls(data["domain_a"], data["domain_b"], list(data["ts"]), list(data["accuracy_a"]),
                   list(data["accuracy_b"]), data.get("base_accuracy_a"), data.get("base_accuracy_b"))


@torch.no_grad()
def next_token_accuracy(model: torch.nn.Module, rows: torch.Tensor, device: str = "cpu", batch_size: int = 32,
                        special_ids: Iterable[int] | None = None) -> float:
    """Share of predicted positions of `rows` [n, ctx] where the model's top token (argmax of the logits) is the
    next token. With `special_ids`, only text tokens count (core.token_kinds: no separator and none of a
    document's first tokens, which any corpus of short documents teaches)."""
    from core import token_kinds

    model.to(device).eval()
    special = tuple(special_ids) if special_ids is not None else None
    right, count = 0, 0
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start:start + batch_size].to(device)
        hits = model(input_ids=batch).logits[:, :-1].argmax(-1) == batch[:, 1:]  # [b, ctx-1]
        if special is not None:
            hits = hits[token_kinds.token_kinds(batch, special) == token_kinds.TEXT]
        right += int(hits.sum().item())
        count += hits.numel()
    if not count:
        raise StudyInputError("no held-out token to score: the domain's held-out rows are empty")
    return right / count


def write_curve(curve: SlerpCurve, folder: Path) -> Path:
    path = Path(folder) / CURVE_FILE
    path.write_text(json.dumps(curve.to_dict(), indent=1) + "\n")
    return path


def read_curve(folder: Path) -> SlerpCurve | None:
    """The curve stored beside a merged model, or None where the folder holds none (a merge made elsewhere)."""
    path = Path(folder) / CURVE_FILE
    return SlerpCurve.from_dict(json.loads(path.read_text())) if path.is_file() else None
