"""The table `precompute run` prints at the end: per arm, what a reader checks first."""

from __future__ import annotations

import math
from pathlib import Path

from core import database as db
from core.config import StudyConfig

COLUMNS = ("arm", "features", "candidates", "coh. mean", "coh. median", "dead", "EV", "CE rec.", "seconds")


def summary_lines(config: StudyConfig, report: object) -> list[str]:
    """Per arm: features, medical candidates, mean / median coherence, dead features, explained variance,
    CE loss recovered, and the seconds each stage took in this run (skipped stages: 0)."""
    with db.connect_read_only(Path(config.features_db)) as con:
        summary = db.queries.arm_summary(con).set_index("arm")
        metrics = db.read_metrics(con)
        pairs = db.diff_queries.pair_summary(con)
    value = {(r.arm, r.metric): r.value for r in metrics.itertuples() if isinstance(r.arm, str)}
    rows = [COLUMNS]
    for arm in (a.name for a in config.arms):
        s = summary.loc[arm]
        features, candidates, dead = int(s.features), int(s.candidates), int(s.dead)
        seconds = getattr(report, "seconds", {}).get(arm, {})
        rows.append((
            arm, f"{features:,}", f"{candidates:,} ({100 * candidates / features:.2f}%)",
            _fmt(s.coherence_mean), _fmt(s.coherence_median), f"{dead:,} ({100 * dead / features:.1f}%)", _fmt(value.get((arm, "explained_variance"))),
            _fmt(value.get((arm, "ce_loss_recovered"))),
            " ".join(f"{stage[:4]} {sec:.0f}" for stage, sec in seconds.items()) or "-",
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  " + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in rows]
    for pair in pairs:
        lines += _pair_lines(pair["pair"], pair["counts"], pair["metrics"])
    return lines


def _pair_lines(names: tuple[str, str], counts: object, metrics: dict[str, float]) -> list[str]:
    """One pair's fate counts and mean activation cosine, each line naming the pair."""
    lines = []
    if len(counts):
        fates = "; ".join(f"{r.arm} {r.status} {r.features:,}" + (f" ({100 * r.share:.0f}%)" if r.share == r.share
                                                                     and r.share is not None else "")
                          for r in counts.itertuples())
        lines.append(f"  model diff {names[0]} → {names[1]} on {int(metrics.get('matching.n_tokens', 0)):,} tokens: "
                     f"{fates}")
    if "similarity.mean_cosine" in metrics:
        lines.append(f"  activation similarity {names[0]} → {names[1]} at the hook: mean cosine "
                     f"{metrics['similarity.mean_cosine']:.3f}")
    return lines


def _fmt(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
