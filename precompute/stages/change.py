"""change: two diff methods that need no second SAE (issue 22), from one pass of both models over the pair's rows:
arm a's SAE's features ranked by how their activations change from model a to model b (core.activation_change),
and the activation difference lens, the mean of (b − a) residuals read through the logit lens and against both
SAEs' decoder directions (core.diff_lens).

One token pass (PASSES): `shard` folds any subset of the pair's rows, batch by batch (`update_batch`, which an
executor may call on any rows), into an AccumulatorMap of both methods' accumulators; the accumulators of disjoint
shards merge, and `finish` turns the merged one into the tables. Both models run once per batch, to the deepest
site the lens reads (never the unembedding), and the SAE encodes both at its hook.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import torch

from core.accumulator import AccumulatorMap
from core.activation_change import FeatureChange, FeatureChangeAccumulator, locate_rows, ranked, row_fingerprints
from core.database.schema import (DIFF_LENS, DIFF_LENS_FEATURES, DIFF_LENS_TOKENS, FEATURE_CHANGE,
                                  FEATURE_CHANGE_CONTEXTS)
from core.diff_lens import (DiffLensAccumulator, LensMean, aligned_features, direction_logits, lens_sites,
                            medical_top_counts, random_directions, ranked_tokens, site_layer)
from core.errors import StudyInputError
from core.hook_reads import activations_at_hooks
from core.token_text import medical_token_mask, vocabulary_strings
from precompute.pair import Pair, different_tokenizers, pair_key_parts, pair_tokens
from precompute.pair_pass import PairPasses
from precompute.stage import KeyParts, Stage, StageResult

TOP_FEATURES = 50  # the most increased and the most decreased features whose contexts are stored
CONTEXT_SLOTS = 3  # rows kept per feature and direction
WINDOW_BEFORE, WINDOW_AFTER = 12, 4  # a context: tokens around the token of largest change (as the activations')
LENS_TOP = 20  # tokens each way through each unembedding; features each way per SAE
RANDOM_DIRECTIONS, RANDOM_SEED = 5, 0  # the lens's control: random directions of the vector's norm
FDR = 0.05  # the q-value under which the metrics count a feature as changed


def run_change(con: duckdb.DuckDBPyConnection, pair: Pair) -> StageResult:
    return PASSES.run_whole(pair)


def new_accumulators(pair: Pair) -> AccumulatorMap:
    a = pair.a
    device = a.sae.W_dec.device
    sites = lens_sites(a.hook_name, a.model.cfg.n_layers, pair.lens_layers)
    return AccumulatorMap(change=FeatureChangeAccumulator(a.d_sae, CONTEXT_SLOTS, WINDOW_BEFORE, WINDOW_AFTER, device),
                          lens=DiffLensAccumulator(sites, a.model.cfg.d_model, pair.lens_positions, device))


@torch.no_grad()
def update_batch(pair: Pair, accumulators: AccumulatorMap, batch: torch.Tensor) -> None:
    """Token rows [B, T] (BOS first) folded into `accumulators` (new_accumulators): each model runs once to the
    deepest lens site; arm a's SAE encodes both models' activations at its hook."""
    sae, hook = pair.a.sae, pair.a.hook_name
    sites = accumulators["lens"].sites
    acts_a = activations_at_hooks(pair.a.model, sites, batch)
    acts_b = activations_at_hooks(pair.b.model, sites, batch)
    device = sae.W_dec.device
    accumulators["change"].update(sae.encode(acts_a[hook].to(device)), sae.encode(acts_b[hook].to(device)),
                                  row_fingerprints(batch))
    accumulators["lens"].update(acts_a, acts_b)


def shard(pair: Pair, rows: torch.Tensor, earlier: None = None) -> AccumulatorMap:
    """Both methods over token rows [m, T] of the pair's rows (BOS first); the state comes back on the CPU."""
    check_settings(pair, rows.shape[1])
    accumulators = new_accumulators(pair)
    for start in pair.progress("feature change and difference lens")(range(0, rows.shape[0], pair.batch_size)):
        update_batch(pair, accumulators, rows[start:start + pair.batch_size])
    for accumulator in accumulators.values():
        accumulator.to("cpu")
    return accumulators


def finish(pair: Pair, accumulators: AccumulatorMap) -> StageResult:
    """The tables and metrics over every row (one accumulator, or shards merged)."""
    change, lens = accumulators["change"].result(), accumulators["lens"].result()
    strings = {arm.name: vocabulary_strings(arm.model.tokenizer, arm.model.cfg.d_vocab) for arm in (pair.a, pair.b)}
    vocab = {name: (medical_token_mask(raw, pair.medical_words), text) for name, (raw, text) in strings.items()}
    lens_rows = [_lens_reading(pair, mean, vocab) for mean in lens]
    tables = {
        "feature_change": _change_table(pair, change),
        "feature_change_contexts": _contexts_table(pair, change, strings[pair.a.name][1]),
        "diff_lens": pa.Table.from_pylist([row for row, _, _ in lens_rows], schema=DIFF_LENS.schema),
        "diff_lens_tokens": pa.Table.from_pylist([t for _, tokens, _ in lens_rows for t in tokens],
                                                 schema=DIFF_LENS_TOKENS.schema),
        "diff_lens_features": pa.Table.from_pylist([f for _, _, features in lens_rows for f in features],
                                                   schema=DIFF_LENS_FEATURES.schema),
    }
    return tables, {**_change_metrics(change), **_lens_metrics(lens_rows)}


def _change_table(pair: Pair, change: FeatureChange) -> pa.Table:
    d_sae = len(change.mean_a)
    ranks = {}
    for direction in ("increase", "decrease"):
        rank = np.full(d_sae, -1, np.int64)
        order = ranked(change.change, d_sae, direction)
        rank[order] = np.arange(len(order))
        ranks[direction] = pa.array(rank, pa.int32(), mask=rank < 0)
    return pa.table({
        **pair.columns(d_sae), "feature": np.arange(d_sae, dtype=np.int32), "mean_a": change.mean_a,
        "mean_b": change.mean_b, "change": change.change, "frac_a": change.frac_a, "frac_b": change.frac_b,
        "frac_change": change.frac_b - change.frac_a, "n_fired_a": change.n_fired_a, "n_fired_b": change.n_fired_b,
        "row_change_sd": pa.array(change.row_change_sd, mask=np.isnan(change.row_change_sd)),
        "t": pa.array(change.t, mask=np.isnan(change.t)), "p": change.p,
        "q": pa.array(change.q, mask=np.isnan(change.q)),
        "rank_increase": ranks["increase"], "rank_decrease": ranks["decrease"]})


def _contexts_table(pair: Pair, change: FeatureChange, text: np.ndarray) -> pa.Table:
    """The kept rows of the TOP_FEATURES most increased and decreased features, each a window around its token of
    largest change (positions in the row: BOS is 0), with the feature's activation in both models."""
    rows = pair.rows
    offsets = np.arange(-WINDOW_BEFORE, WINDOW_AFTER + 1)
    out = []
    for direction in ("increase", "decrease"):
        contexts = getattr(change, direction)
        features = ranked(change.change, TOP_FEATURES, direction)
        located = locate_rows(contexts.fingerprint[features], rows)  # [n, slots] index into pair.rows
        for i, feature in enumerate(features.tolist()):
            for slot in np.flatnonzero(located[i] >= 0).tolist():
                index, pos = int(located[i, slot]), int(contexts.pos[feature, slot])
                inside = (pos + offsets >= 0) & (pos + offsets < rows.shape[1] - 1)
                ids = rows[index, 1:][torch.from_numpy(pos + offsets[inside])].tolist()
                out.append({
                    "feature": feature, "direction": direction, "rank": slot,
                    "row_index": pair.row_ids[index] if pair.row_ids else index,
                    "row_change": float(contexts.row_change[feature, slot]), "max_pos": pos + 1,
                    "max_index": int(np.flatnonzero(offsets[inside] == 0)[0]), "token_ids": ids,
                    "tokens": text[ids].tolist(), "acts_a": contexts.acts_a[feature, slot][inside].tolist(),
                    "acts_b": contexts.acts_b[feature, slot][inside].tolist()})
    return pa.Table.from_pylist([{"arm_a": pair.a.name, "arm_b": pair.b.name, **row} for row in out],
                                schema=FEATURE_CHANGE_CONTEXTS.schema)


def _lens_reading(pair: Pair, mean: LensMean, vocab: dict[str, tuple[torch.Tensor, np.ndarray]]
                  ) -> tuple[dict, list, list]:
    """One site and kind: its diff_lens row, its top / bottom tokens through each model's unembedding and, at the
    SAE's hook, the features of both SAEs it aligns with most. vocab: arm -> (medical token mask, token texts)."""
    names = {"arm_a": pair.a.name, "arm_b": pair.b.name, "hook_name": mean.site, "kind": mean.kind}
    vector = torch.from_numpy(mean.vector).float()
    row = {**names, "layer": site_layer(mean.site), "n_positions": mean.n_positions, "n_tokens": mean.n_tokens,
           "norm": mean.norm, "norm_a": mean.norm_a, "norm_b": mean.norm_b, "vector": vector.tolist()}
    tokens, features = [], []
    for role, arm in (("a", pair.a), ("b", pair.b)):
        row[f"medical_top20_{role}"], row[f"random_medical_top20_{role}"] = 0, 0.0
        if mean.norm == 0.0:
            continue  # no difference: nothing to read (identical models)
        top_ids, top_values, bottom_ids, bottom_values = ranked_tokens(direction_logits(arm.model, vector[None])[0],
                                                                       LENS_TOP)
        is_medical, text = vocab[arm.name]
        row[f"medical_top20_{role}"] = int(is_medical[top_ids].sum())
        controls = random_directions(len(vector), RANDOM_DIRECTIONS, mean.norm, RANDOM_SEED)
        row[f"random_medical_top20_{role}"] = float(np.mean(medical_top_counts(arm.model, controls, is_medical,
                                                                               LENS_TOP)))
        for direction, ids, values in (("top", top_ids, top_values), ("bottom", bottom_ids, bottom_values)):
            tokens += [{**names, "unembed_arm": arm.name, "direction": direction, "rank": rank, "token_id": int(i),
                        "token": str(text[i]), "logit": float(v), "is_medical": bool(is_medical[i])}
                       for rank, (i, v) in enumerate(zip(ids, values))]
        if mean.site == pair.a.hook_name:
            top_f, top_cos, bottom_f, bottom_cos = aligned_features(vector, arm.sae.W_dec, LENS_TOP)
            for direction, ids, cos in (("aligned", top_f, top_cos), ("opposed", bottom_f, bottom_cos)):
                features += [{**names, "sae_arm": arm.name, "direction": direction, "rank": rank, "feature": int(f),
                              "cosine": float(c)} for rank, (f, c) in enumerate(zip(ids, cos))]
    return row, tokens, features


def _change_metrics(change: FeatureChange) -> dict[str, float]:
    changed = np.nan_to_num(change.q, nan=1.0) <= FDR
    return {"n_tokens": change.n_tokens, "n_rows": change.n_rows, "n_live": int(change.live.sum()),
            "n_increased": int((changed & (change.change > 0)).sum()),
            "n_decreased": int((changed & (change.change < 0)).sum()),
            "max_abs_change": float(np.abs(change.change).max()) if len(change.change) else 0.0}


def _lens_metrics(lens_rows: list[tuple[dict, list, list]]) -> dict[str, float]:
    """Per site and kind, through model a's unembedding: medical words among the top 20 and the random control's."""
    metrics = {}
    for row, _, _ in lens_rows:
        where = f"{row['kind']}_{row['hook_name']}"
        metrics[f"lens_norm_{where}"] = row["norm"]
        metrics[f"lens_medical_top20_{where}"] = float(row["medical_top20_a"])
        metrics[f"lens_medical_top20_random_{where}"] = row["random_medical_top20_a"]
    return metrics


def check_settings(pair: Pair, row_length: int) -> None:
    """diff.lens_positions and diff.lens_layers against the rows and the model: one line naming the field."""
    n_after_bos = row_length - 1
    if pair.lens_positions > n_after_bos:
        raise StudyInputError(f"diff.lens_positions is {pair.lens_positions} but the rows hold {n_after_bos} tokens "
                              f"after BOS; set it to at most {n_after_bos}")
    lens_sites(pair.a.hook_name, pair.a.model.cfg.n_layers, pair.lens_layers)


def _skip_reason(pair: Pair) -> str | None:
    """Bad settings raise (StudyInputError); a pair the methods cannot compare is skipped with the reason."""
    if pair.rows is not None:
        check_settings(pair, pair.rows.shape[1])
    a, b = pair.a, pair.b
    if a.hook_name != b.hook_name:
        return f"the SAEs read different hooks ({a.hook_name} vs {b.hook_name}); change skipped"
    if a.sae.cfg.d_in != b.sae.cfg.d_in:
        return f"the SAEs read different widths (d_in {a.sae.cfg.d_in} vs {b.sae.cfg.d_in}); change skipped"
    shapes = [(arm.model.cfg.n_layers, arm.model.cfg.d_model) for arm in (a, b)]
    if shapes[0] != shapes[1]:
        return f"the models differ in (layers, width): {shapes[0]} vs {shapes[1]}; change skipped"
    return different_tokenizers(pair, "change")


def _key_parts(parts: KeyParts) -> tuple:
    return (*pair_key_parts(parts), parts.vocabulary, TOP_FEATURES, CONTEXT_SLOTS, WINDOW_BEFORE, WINDOW_AFTER,
            LENS_TOP, RANDOM_DIRECTIONS, RANDOM_SEED, FDR)


PASSES = PairPasses((shard,), finish)

STAGE = Stage("change", version=1, scope="pair",
              tables=(FEATURE_CHANGE, FEATURE_CHANGE_CONTEXTS, DIFF_LENS, DIFF_LENS_TOKENS, DIFF_LENS_FEATURES),
              run=run_change, key_parts=_key_parts, tokens=pair_tokens, skip_reason=_skip_reason, passes=PASSES)
