"""The cross-arm stages of a two-arm study (seeds 002 and 004): activation similarity, SAE transfer, feature
matching. Each returns the rows to store, keyed by the pair label "base|finetuned"; the math is in core/.

Requirements are checked, not assumed: activation similarity needs the same tokenizer and hook, matching the
same tokenizer (both models must read the same tokens), transfer the same d_in. A stage whose requirement
fails is skipped with a logged reason, stored as a metric `skipped` = 1 with the reason in the `notes` table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from core.loading import LoadedArm
from core.match_assignment import assigned_partner, one_to_one
from core.matching import FeatureMatches, collect_coactivations, decoder_cosine, logit_weight_similarity, match_features
from core.model_diff import activation_similarity, log_density_correlation, sae_transfer

logger = logging.getLogger(__name__)
StageResult = tuple[dict[str, pa.Table], dict[str, float]]


@dataclass
class Pair:
    """The two loaded arms of a study, the corpus rows (in arm a's tokenizer) and the shared settings."""

    a: LoadedArm
    b: LoadedArm
    rows: object  # torch.Tensor [n, T]
    batch_size: int
    threshold: float
    outlier_factor: float
    progress: Callable[[str], Callable]
    min_firings: int = 1  # fewer firings on these tokens: the feature is rare and has no fate

    @property
    def label(self) -> str:
        return f"{self.a.name}|{self.b.name}"

    def same_tokenizer(self) -> bool:
        return self.a.model.tokenizer.get_vocab() == self.b.model.tokenizer.get_vocab()


def skip_reason(pair: Pair, stage: str) -> str | None:
    """Why a cross stage cannot run on this pair, or None."""
    if stage in ("similarity", "matching") and not pair.same_tokenizer():
        return f"the arms' tokenizers differ, so the two models cannot be run on the same tokens ({stage} skipped)"
    if stage == "similarity" and pair.a.hook_name != pair.b.hook_name:
        return f"the SAEs read different hooks ({pair.a.hook_name} vs {pair.b.hook_name}); similarity skipped"
    if stage == "transfer" and pair.a.sae.cfg.d_in != pair.b.sae.cfg.d_in:
        return f"the SAEs' d_in differ ({pair.a.sae.cfg.d_in} vs {pair.b.sae.cfg.d_in}); transfer skipped"
    return None


def run_similarity(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    result = activation_similarity(pair.a.model, pair.b.model, pair.a.hook_name, pair.rows, pair.batch_size,
                                   progress=pair.progress("activation similarity"))
    hist = []
    for kind, edges, counts in (("cosine", result.cosine_edges, result.cosine_hist),
                                ("distance", result.distance_edges, result.distance_hist)):
        hist.append(pa.table({"pair": [pair.label] * len(counts), "kind": [kind] * len(counts),
                              "low": np.asarray(edges[:-1], np.float64), "high": np.asarray(edges[1:], np.float64),
                              "count": np.asarray(counts, np.int64)}))
    by_position = pa.table({"pair": [pair.label] * len(result.position), "position": np.asarray(result.position),
                            "mean_cosine": np.asarray(result.mean_cosine_by_position, np.float64),
                            "mean_distance": np.asarray(result.mean_distance_by_position, np.float64)})
    metrics = {"n_tokens": result.n_tokens, "mean_cosine": result.mean_cosine, "mean_distance": result.mean_distance}
    return {"similarity_hist": pa.concat_tables(hist), "similarity_by_position": by_position}, metrics


def run_transfer(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    """Each SAE on its own model and on the other model, with the same outlier filter, and the correlation of
    its log10 feature densities on the two models."""
    rows, densities, metrics = [], [], {}
    for sae_arm in (pair.a, pair.b):
        own = None
        for model_arm in (sae_arm, pair.b if sae_arm is pair.a else pair.a):
            transfer = sae_transfer(model_arm.model, sae_arm.sae, sae_arm.hook_name, pair.rows, pair.outlier_factor,
                                    pair.batch_size, progress=pair.progress(f"SAE {sae_arm.name} on {model_arm.name}"))
            q, r = transfer.quality, transfer.quality.reconstruction
            values = {"l0": r.l0, "explained_variance": r.explained_variance, "mse": r.mse,
                      "dead_fraction": float((transfer.density == 0).mean()), "ce_loss_clean": q.ce_loss_clean,
                      "ce_loss_spliced": q.ce_loss_spliced, "ce_loss_delta": q.ce_loss_delta,
                      "ce_loss_recovered": q.ce_loss_recovered, "n_outliers": transfer.n_outliers,
                      "outlier_fraction": transfer.outlier_fraction, "n_tokens": transfer.n_positions}
            rows += [(sae_arm.name, model_arm.name, name, float(value)) for name, value in values.items()]
            densities.append(pa.table({
                "pair": [pair.label] * len(transfer.density), "sae_arm": [sae_arm.name] * len(transfer.density),
                "model_arm": [model_arm.name] * len(transfer.density),
                "feature": np.arange(len(transfer.density), dtype=np.int32), "frac_nonzero": transfer.density}))
            if own is None:
                own = transfer.density
            else:
                corr = log_density_correlation(own, transfer.density)
                metrics[f"log_density_pearson_{sae_arm.name}"] = corr.pearson
                metrics[f"log_density_excluded_{sae_arm.name}"] = corr.n_excluded
    table = pa.table({"pair": [pair.label] * len(rows), "sae_arm": [r[0] for r in rows],
                      "model_arm": [r[1] for r in rows], "metric": [r[2] for r in rows],
                      "value": [r[3] for r in rows]})
    return {"transfer_metrics": table, "transfer_densities": pa.concat_tables(densities)}, metrics


def run_matching(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    a, b = pair.a, pair.b
    coactivations = collect_coactivations(a.model, a.sae, a.hook_name, b.model, b.sae, b.hook_name, pair.rows,
                                          pair.batch_size, device=a.sae.W_dec.device,
                                          progress=pair.progress("co-activations"))
    matches = match_features(coactivations, pair.threshold, min_firings=pair.min_firings)
    pairs = matches.pairs
    kept = one_to_one(pairs.a, pairs.b, pairs.corr, a.d_sae, b.d_sae)
    partners = pairs.partner_counts(a.d_sae, b.d_sae)
    assigned = (assigned_partner(pairs.a, pairs.b, pairs.corr, kept, a.d_sae),
                assigned_partner(pairs.b, pairs.a, pairs.corr, kept, b.d_sae))
    tables = [_match_table(pair, side, matches, partners[k], assigned[k]) for k, side in enumerate("ab")]
    match_pairs = pa.table({
        "pair": [pair.label] * len(kept), "arm_a": [a.name] * len(kept), "feature_a": pairs.a.astype(np.int32),
        "arm_b": [b.name] * len(kept), "feature_b": pairs.b.astype(np.int32), "corr": pairs.corr, "assigned": kept})
    metrics = {name: float(value) for name, value in matches.counts().items()}
    metrics.update({"threshold": pair.threshold, "n_tokens": matches.n_tokens, "min_firings": pair.min_firings,
                    "n_pairs": len(kept), "n_assigned": int(kept.sum()),
                    "assigned_corr_total": float(pairs.corr[kept].sum())})
    return {"feature_matches": pa.concat_tables(tables), "match_pairs": match_pairs}, metrics


def _match_table(pair: Pair, side: str, matches: FeatureMatches, n_partners: np.ndarray,
                 assigned: tuple[np.ndarray, np.ndarray]) -> pa.Table:
    """feature_matches rows of one arm: best match, status, decoder / logit similarity, partners, assignment."""
    arm, other = (pair.a, pair.b) if side == "a" else (pair.b, pair.a)
    match, corr = getattr(matches, f"{side}_match"), getattr(matches, f"{side}_corr")
    own_ids = np.arange(len(match))
    same_width = arm.sae.cfg.d_in == other.sae.cfg.d_in
    cos = decoder_cosine(arm.sae.W_dec, other.sae.W_dec, own_ids, match) if same_width else np.full(len(match), np.nan)
    logit = _logit_similarity(arm, other, own_ids, match) if pair.same_tokenizer() else np.full(len(match), np.nan)
    partner, partner_corr = assigned
    return pa.table({
        "pair": [pair.label] * len(match), "arm": [arm.name] * len(match), "feature": own_ids.astype(np.int32),
        "match_arm": [other.name] * len(match), "match_feature": pa.array(np.where(match < 0, None, match), pa.int32()),
        "match_corr": pa.array(corr, mask=np.isnan(corr)),
        "status": pa.array(list(getattr(matches, f"{side}_status")), pa.string()),
        "decoder_cos": pa.array(cos, mask=np.isnan(cos)), "logit_sim": pa.array(logit, mask=np.isnan(logit)),
        "n_fired": np.asarray(getattr(matches, f"{side}_n_fired"), np.int64),
        "n_partners": np.asarray(n_partners, np.int32),
        "assigned_feature": pa.array(np.where(partner < 0, None, partner), pa.int32()),
        "assigned_corr": pa.array(partner_corr, mask=np.isnan(partner_corr))})


def _logit_similarity(arm: LoadedArm, other: LoadedArm, own: np.ndarray, match: np.ndarray) -> np.ndarray:
    return logit_weight_similarity(arm.sae.W_dec, arm.model.W_U, other.sae.W_dec, other.model.W_U, own, match)


RUNNERS: dict[str, Callable[[duckdb.DuckDBPyConnection, Pair], StageResult]] = {
    "similarity": run_similarity, "transfer": run_transfer, "matching": run_matching,
}
