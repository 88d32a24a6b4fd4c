"""What the study's database holds: its arms, token sets, stages and metrics, and each arm's overview."""

from __future__ import annotations

import pandas as pd

from core.database import metrics, queries
from dashboard.reads.connection import study_read

arms = study_read(queries.arms, columns=("arm", "position", "hook_name", "d_sae", "sae_fingerprint"))
token_sets = study_read(queries.token_sets, columns=("token_set", "source", "n_rows", "n_tokens"))
stage_token_sets = study_read(queries.stage_token_sets)
arm_metrics = study_read(metrics.arm_metrics)
arm_overview = study_read(queries.arm_overview, columns=(
    "arm", "hook_name", "d_sae", "features", "candidates", "candidates_by_decoder", "candidates_by_firing",
    "coherence_mean", "coherence_median", "dead", "dead_fraction", "l0", "explained_variance", "ce_loss_recovered",
    "n_tokens", "token_set", "dead_token_set"))


def arm_names() -> list[str]:
    return arms()["arm"].tolist()


def widths() -> dict[str, int]:
    """arm -> d_sae, in the study's order of arms: what a feature id of each arm must fall below."""
    frame = arms()
    return {arm: int(d_sae) for arm, d_sae in zip(frame["arm"], frame["d_sae"])}


def d_sae(arm: str) -> int:
    """The number of features of `arm`'s SAE."""
    return widths()[arm]


def fingerprints() -> dict[str, str]:
    """arm -> decoder fingerprint of the SAE the database was computed with (labels are keyed by it)."""
    frame = arms()
    return dict(zip(frame["arm"], frame["sae_fingerprint"]))


def describe_token_set(sets: pd.DataFrame, name: str | None, detail: bool = False) -> str:
    """A token set in words, from `token_sets` rows: "the whole corpus (59,563 tokens)", or with detail its mix:
    "...: heldout_general 235 rows (50%), heldout_medical 234 rows (50%)"."""
    rows = sets[sets["token_set"] == name]
    if rows.empty:
        return "tokens not recorded (rebuild the database)"
    kind = "the whole corpus" if name == "corpus" else "an even sample of the corpus"
    text = f"{kind} ({int(rows['n_tokens'].sum()):,} tokens)"
    if not detail:
        return text
    total = rows["n_rows"].sum()
    return text + ": " + ", ".join(f"{r.source} {int(r.n_rows):,} rows ({r.n_rows / total:.0%})"
                                   for r in rows.itertuples())


def token_set_text(name: str | None, detail: bool = False) -> str:
    """`describe_token_set` on this study's database."""
    return describe_token_set(token_sets(), name, detail)


def arm_token_set_text(arm: str, stage: str = "activations") -> str:
    """The token set an arm's stage measured on, in words."""
    return token_set_text(stage_token_sets().get(f"{arm}/{stage}"))


def typical_norm(arm: str) -> tuple[float, int] | None:
    """(median activation norm at the SAE's hook, tokens it was measured on): the quality stage's, BOS left out;
    None for a database built before it was stored."""
    quality = arm_metrics(arm).quality
    if quality.median_activation_norm is None:
        return None
    return quality.median_activation_norm, int(quality.n_tokens or 0)
