"""The Steer page's random control: beside the steered text, a text steered along a random direction of the same
norm (core.steer_controls: direction 0 of the features, seeded by the study's seed, as in Table 1), scored against
the same target; and Table 1's stored verdict for the chosen features, the paper's rule named as the paper's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from core import steering
from core.steer_controls import direction_seed, generate_along, random_directions
from core.steer_scores import perplexity

CHEAP_PARAMETERS = 1_000_000_000  # above this, on a CPU, a third generation per click is not cheap: off by default


@dataclass(frozen=True)
class ControlRun:
    """One generation along random direction 0 of the steered features, with the steered text's prompt, seed and
    settings; `seed` reproduces the direction alone (core.steer_controls.random_direction)."""

    seed: int
    norm: float  # of the direction: the steering vector's
    generation: steering.Generation
    similarity: float  # against the steered text's target
    perplexity: float  # under the unsteered model
    hits: list[float]


def control_is_cheap(loaded: Any, random_directions_config: int) -> bool:
    """The checkbox's default: on where the study runs a control at all and one more generation is cheap (a GPU, or
    a model of at most CHEAP_PARAMETERS)."""
    if random_directions_config < 1:
        return False
    parameters = sum(p.numel() for p in loaded.model.parameters())
    return str(loaded.model.cfg.device).startswith("cuda") or parameters <= CHEAP_PARAMETERS


def run_control(loaded: Any, coefficients: dict[int, float], prompt: str, settings: steering.SamplingSettings,
                top: Any, measure: str, kv: Any, study_seed: int) -> ControlRun:
    """`top`: the steered text's target (dashboard.steer_runs.TopTokens)."""
    features = tuple(coefficients)
    vector = steering.steering_vector(loaded.sae.W_dec, coefficients)
    direction = random_directions(vector, 1, study_seed, features)[0]
    generation = generate_along(loaded, direction, prompt, settings)
    fluency = perplexity(loaded.model, generation.prompt_ids, generation.token_ids)  # under the unsteered model
    return ControlRun(direction_seed(study_seed, features, 0), float(vector.norm()), generation,
                      top.scores([generation.text], measure, kv)[0], fluency, top.hits(generation.token_ids))


def control_verdict(steered: float, control: float) -> str:
    """One line: does the steered text beat the random push against the same target?"""
    if steered != steered or control != control:
        return "No verdict: a text has nothing to score."
    if steered > control:
        return f"The feature beats a random push of the same norm here ({steered:.3f} > {control:.3f})."
    return (f"The feature does **not** beat a random push of the same norm here ({steered:.3f} ≤ {control:.3f}): "
            "its similarity may come from pushing at all, not from its direction.")


def table1_lines(stored: pd.DataFrame, targets: dict[str, str]) -> list[str]:
    """Per feature steer-eval has scored (`queries.steering_results` rows): what it was scored against, its means,
    the paper's rule and the random control's, in words."""
    lines = []
    for row in stored.itertuples():
        paper = "passes" if row.passing else "fails"
        line = (f"#{row.feature}: scored against {targets.get(row.target, 'the top tokens (decoder)')}; steered "
                f"{row.mean_steered:.3f}, unsteered {row.mean_unsteered:.3f}: {paper} the paper's rule (beats "
                "unsteered)")
        if pd.isna(row.beats_random):
            lines.append(line + "; no random control was run.")
            continue
        beats = "beats" if row.beats_random else "does not beat"
        both = "passes" if row.passing_controlled else "fails"
        lines.append(f"{line}; random {row.mean_random:.3f} over {row.random_directions} directions: it {beats} "
                     f"random ({row.random_beaten} of {row.random_directions} directions beaten), so it {both} the "
                     "controlled rule (beats both).")
    return lines
