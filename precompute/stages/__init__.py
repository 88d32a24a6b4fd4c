"""The registry of precompute stages, in the order `run` runs them: per-arm stages, then pair stages.

Adding a measurement: one file here declaring a `Stage` (its tables declared in core.database.schema), and
one line below. `--only`, the stage keys, the tables a stage clears and the write-time checks all read it.
"""

from __future__ import annotations

from precompute.stage import Stage
from precompute.stages import (activations, change, divergence, domains, feature_map, matching, neighbours, projection,
                               quality, similarity, transfer, words)

REGISTRY: dict[str, Stage] = {stage.name: stage for stage in (
    projection.STAGE, activations.STAGE, words.STAGE, quality.STAGE, domains.STAGE, neighbours.STAGE,
    similarity.STAGE, transfer.STAGE, matching.STAGE, divergence.STAGE, change.STAGE, neighbours.CROSS_STAGE,
    feature_map.STAGE,
)}
ARM_STAGES = tuple(name for name, stage in REGISTRY.items() if stage.scope == "arm")
PAIR_STAGES = tuple(name for name, stage in REGISTRY.items() if stage.scope == "pair")
