"""The stages' metrics (table `metrics`: one number per stage and name) read back as typed records: a page reads
`pair_metrics(con, pair).matching.same_index_share_b`, never the string "matching.same_index_share_b". A metric a
stage did not record (an older database, a skipped stage) is None."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb

Pair = tuple[str, str]
M = TypeVar("M")


def _record(cls: type[M], values: dict[str, float]) -> M:
    """cls with each field a metric of that name (None when the stage did not record it)."""
    return cls(**{f.name: values.get(f.name) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                  if f.name in values})


@dataclass(frozen=True)
class QualityMetrics:
    """The quality stage (core.sae_metrics), BOS left out."""

    l0: float | None = None
    explained_variance: float | None = None
    ce_loss_recovered: float | None = None
    n_tokens: float | None = None
    median_activation_norm: float | None = None  # the typical norm steering coefficients are scaled by


@dataclass(frozen=True)
class ArmMetrics:
    quality: QualityMetrics = field(default_factory=QualityMetrics)


@dataclass(frozen=True)
class MatchingMetrics:
    """The matching stage (core.matching): its settings, the tokens it read, the pairs it kept."""

    threshold: float | None = None
    min_firings: float | None = None
    n_tokens: float | None = None
    n_pairs: float | None = None
    n_assigned: float | None = None
    assigned_corr_total: float | None = None
    same_index_share_a: float | None = None  # share of best matches at their own index (a lineage)
    same_index_share_b: float | None = None


@dataclass(frozen=True)
class SimilarityMetrics:
    n_tokens: float | None = None
    mean_cosine: float | None = None
    mean_distance: float | None = None


@dataclass(frozen=True)
class DivergenceMetrics:
    """The divergence stage (core.divergence, core.boundaries); `skipped` 1 when it did not run."""

    n_tokens: float | None = None
    mean_kl: float | None = None
    n_divergent: float | None = None
    divergent_threshold: float | None = None
    divergent_share: float | None = None
    max_kl: float | None = None
    boundary_tokens: float | None = None
    n_boundary: float | None = None
    boundary_share: float | None = None  # None: a stage from before issue 22 ranked every token
    mean_kl_text: float | None = None
    mean_kl_boundary: float | None = None
    boundary_share_of_top: float | None = None
    skipped: float | None = None


@dataclass(frozen=True)
class TransferMetrics:
    """Per SAE arm: the Pearson correlation of its log densities on its own model and the other."""

    log_density_pearson: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PairMetrics:
    matching: MatchingMetrics = field(default_factory=MatchingMetrics)
    similarity: SimilarityMetrics = field(default_factory=SimilarityMetrics)
    divergence: DivergenceMetrics = field(default_factory=DivergenceMetrics)
    transfer: TransferMetrics = field(default_factory=TransferMetrics)


def _by_stage(rows: list[tuple[str, str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for stage, metric, value in rows:
        out.setdefault(stage, {})[metric] = float(value)
    return out


def pair_metrics(con: duckdb.DuckDBPyConnection, pair: Pair) -> PairMetrics:
    """The pair stages' metrics of one pair."""
    stages = _by_stage(con.execute("SELECT stage, metric, value FROM metrics WHERE arm_a = ? AND arm_b = ?",
                                   list(pair)).fetchall())
    transfer = stages.get("transfer", {})
    prefix = "log_density_pearson_"
    return PairMetrics(matching=_record(MatchingMetrics, stages.get("matching", {})),
                       similarity=_record(SimilarityMetrics, stages.get("similarity", {})),
                       divergence=_record(DivergenceMetrics, stages.get("divergence", {})),
                       transfer=TransferMetrics({k.removeprefix(prefix): v for k, v in transfer.items()
                                                 if k.startswith(prefix)}))


def arm_metrics(con: duckdb.DuckDBPyConnection, arm: str) -> ArmMetrics:
    """The arm stages' metrics of one arm."""
    stages = _by_stage(con.execute("SELECT stage, metric, value FROM metrics WHERE arm = ?", [arm]).fetchall())
    return ArmMetrics(quality=_record(QualityMetrics, stages.get("quality", {})))
