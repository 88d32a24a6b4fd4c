"""The study's declared pairs: which they are, their roles (a control pair and the pair it controls), and what
the pair stages recorded about themselves (typed metrics, token sets, why a stage was skipped)."""

from __future__ import annotations

from core.database import diff_queries, metrics
from dashboard.reads.connection import study_read

Pair = tuple[str, str]

pairs = study_read(diff_queries.pairs)
pair_controls = study_read(diff_queries.pair_controls)
pair_metrics = study_read(metrics.pair_metrics)
pair_token_sets = study_read(diff_queries.pair_token_sets)
diff_notes = study_read(diff_queries.diff_notes, columns=("stage", "note"))


def pair_label(pair: Pair, roles: dict[Pair, dict[str, str | None]]) -> str:
    """"base → finetuned", or "base → base_resae (control of finetuned)" for a control pair (`pair_controls`)."""
    controls = roles.get(tuple(pair), {}).get("controls")  # type: ignore[call-overload]
    return f"{pair[0]} → {pair[1]}" + (f" (control of {controls})" if controls else "")


def first_pair(arm: str) -> Pair | None:
    """The first declared pair `arm` is in: the one whose fate the features view shows."""
    return next((pair for pair in pairs() if arm in pair), None)


def main_pairs() -> list[Pair]:
    """The declared pairs that are no other pair's control (What changed answers for these)."""
    roles = pair_controls()
    return [pair for pair in pairs() if not roles.get(pair, {}).get("controls")]
