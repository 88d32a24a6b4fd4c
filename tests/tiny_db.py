"""A features database written by hand, with numbers the page tests check: 2 arms × 6 features.

Every table goes through the precompute's schema check (core.database.schema.conform) before it is written, so a
column the schema has and this file forgets fails here, naming it; the per-feature tables take their columns from
the field declarations (core.database.feature_fields) and each must be given a value."""

from pathlib import Path

import numpy as np
import pyarrow as pa

from core import database as db
from core.activations import HIST_EDGES, INTERVAL_EDGES
from core.database.feature_fields import table_columns
from core.database.schema import TABLES, conform

D_SAE = 6
TOP = {  # feature -> top tokens (the same in both arms, shifted by arm so the arms differ)
    0: [" heart", " kidney", " the"], 1: [" heart", " lung", " liver"], 2: [" the", " a", " of"],
    3: [" 123", " 456", " 789"], 4: [" blood", " heart", " and"], 5: [" walk", " run", " jump"],
}
MATCHES = {0: 2, 1: 3, 2: 0, 3: 0, 4: 2, 5: 0}  # candidates: 0, 1, 4
COHERENCE = {0: 0.5, 1: 0.7, 2: 0.2, 3: None, 4: 0.3, 5: 0.6}
DENSITY = {0: 0.01, 1: 0.002, 2: 0.3, 3: 0.0, 4: 0.05, 5: 0.0001}
FINGERPRINT = {"base": "fp-base", "finetuned": "fp-finetuned"}
# The domains stage: mean activation on medical text over general text (general 0.1 each; feature 3 never fires).
MEDICAL_RATIO = {0: 4.0, 1: 8.0, 2: 0.5, 3: None, 4: 2.0, 5: 1.0}


# The model diff (write_tiny_db(..., pair=True)), on a token set of 2 + 2 rows of 16 tokens from two files.
# base 0 is the partner of finetuned 0, 2 and 3 (many-to-one); the assignment keeps base0-ft0 and base4-ft1.
STATUS = {"base": ["persist", "dead", "disappear", "rare", "persist", "disappear"],
          "finetuned": ["persist", "persist", "persist", "persist", "dead", "emerge"]}
PAIRS = [(0, 0, 0.95, True), (0, 2, 0.85, False), (0, 3, 0.82, False), (4, 1, 0.9, True)]  # base, ft, corr, kept
DIFF_FIRED = {"base": [40, 0, 30, 3, 25, 12], "finetuned": [40, 25, 38, 37, 0, 20]}
# The divergence stage: rows 3 (most divergent, peak at token 5) and 0 of the corpus, 15 tokens each; base feature 2
# and finetuned feature 5 live on the divergent tokens (the others never fire there).
DIVERGENT_ROWS = [(3, 0.2, 5), (0, 0.05, 2)]  # corpus row, mean KL, token of the max KL
ENRICHED = {"base": (2, 3.0, 0.5), "finetuned": (5, 2.0, 0.0)}  # feature, mean there, mean elsewhere
# write_tiny_db(..., lineage=True): the fine-tuned SAE went on from the base SAE. Feature i against the other arm's
# feature i, where both fired (index 1: base dead, 3: base rare, 4: finetuned dead), consistent with the best
# matches: 0 is its own best match (0.95), base 2's best is 0.4 so its own index is below, finetuned 5's best is base 5.
SAME_INDEX = {0: (0.95, 0.99), 2: (0.35, 0.8), 5: (0.4, 0.5)}  # feature -> (corr, decoder cos)
SAME_INDEX_SHARE = 0.75  # the stage's metric, given: six features are too few to show a lineage by themselves


def write_tiny_db(path: Path, arms=("base", "finetuned"), pair: bool = False, lineage: bool = False) -> Path:
    con, _ = db.open_build(path)
    db.write_study(con, "tiny", "", "{}", "hash", "{}", HIST_EDGES.tolist(), INTERVAL_EDGES.tolist())
    for position, arm in enumerate(arms):
        db.write_arm(con, {"arm": arm, "position": position, "model": f"m/{arm}", "sae_source": f"s/{arm}",
                           "hook_name": "blocks.0.hook_resid_pre", "d_in": 8, "d_sae": D_SAE, "d_vocab": 100,
                           "n_layers": 1, "device": "cpu", "model_fingerprint": "m", "sae_fingerprint": FINGERPRINT[arm],
                           "processing_json": "{}"})
        _write_arm_stages(con, arm)
        _write_neighbours(con, arm)
    if pair:
        db.write_pairs(con, [("base", "finetuned")])
        _write_pair_stages(con, lineage)
        _write_cross_neighbours_and_map(con)
    db.publish(con, path)
    return path


def _write_arm_stages(con, arm: str) -> None:
    features = np.arange(D_SAE, dtype=np.int32)
    rows = [(f, rank, token, 3.0 - rank) for f in range(D_SAE) for rank, token in enumerate(TOP[f])]
    top = pa.table({"arm": [arm] * len(rows), "feature": [r[0] for r in rows], "kind": ["top"] * len(rows),
                    "rank": [r[1] for r in rows], "token_id": [r[1] for r in rows], "token": [r[2] for r in rows],
                    "value": [r[3] for r in rows]})
    _write(con, arm, "projection", {"top_tokens": top})
    words = _per_feature("feature_words", arm, coherence=[COHERENCE[f] for f in range(D_SAE)], n_valid=[3] * D_SAE,
                         med_matches=[MATCHES[f] for f in range(D_SAE)],
                         is_candidate=[MATCHES[f] >= 2 for f in range(D_SAE)],
                         matched_words=[[w.strip() for w in TOP[f][:MATCHES[f]]] for f in range(D_SAE)],
                         top_text=[" | ".join(TOP[f]) for f in range(D_SAE)],
                         top_words=[sorted(w.strip() for w in TOP[f] if w.strip().isalpha()) for f in range(D_SAE)],
                         fired_med_matches=[0] * D_SAE, fired_matched_words=[[] for _ in range(D_SAE)],
                         candidate_by=["decoder" if MATCHES[f] >= 2 else None for f in range(D_SAE)])
    _write(con, arm, "words", {"feature_words": words})
    n_fired = [int(DENSITY[f] * 10_000) for f in range(D_SAE)]
    # var_act 0.3 - 0.5²; no medical token is counted here, so no medical LLR
    acts = _per_feature("feature_activations", arm, n_fired=n_fired, frac_nonzero=[DENSITY[f] for f in range(D_SAE)],
                        max_act=[float(f + 1) for f in range(D_SAE)], mean_act=[0.5] * D_SAE,
                        var_act=[0.05] * D_SAE, sum_act=[0.5 * n for n in n_fired],
                        sum_sq_act=[0.3 * n for n in n_fired], med_fired=[0] * D_SAE, llr=[None] * D_SAE)
    counts = np.zeros((D_SAE, len(HIST_EDGES) - 1), dtype=np.int64)
    counts[:, 24] = n_fired  # all activations in the bin around 1.0
    hist = pa.table({"arm": [arm] * D_SAE, "feature": features, "counts": pa.array(list(counts))})
    contexts = pa.table({"arm": [arm] * D_SAE, "feature": features, "kind": ["top"] * D_SAE, "rank": [0] * D_SAE,
                         "interval": [None] * D_SAE, "interval_low": [None] * D_SAE, "interval_high": [None] * D_SAE,
                         "max_act": [float(f + 1) for f in range(D_SAE)], "row_index": [0] * D_SAE,
                         "max_pos": [2] * D_SAE, "max_index": [1] * D_SAE,
                         "token_ids": [[1, 2, 3]] * D_SAE,
                         "tokens": [["The", TOP[f][0], " beats"] for f in range(D_SAE)],
                         "acts": [[0.0, float(f + 1), 0.1] for f in range(D_SAE)]})
    _write(con, arm, "activations", {"feature_activations": acts, "histograms": hist, "contexts": contexts,
                                     **_fired_tokens(arm, n_fired)}, token_set="corpus")
    general = [0.0 if MEDICAL_RATIO[f] is None else 0.1 for f in range(D_SAE)]
    domains = _per_feature("feature_domains", arm, mean_act_general=general,
                           mean_act_medical=[0.1 * (MEDICAL_RATIO[f] or 0.0) for f in range(D_SAE)],
                           medical_ratio=[MEDICAL_RATIO[f] for f in range(D_SAE)])
    _write(con, arm, "domains", {"feature_domains": domains})
    _write(con, arm, "quality", {}, {"explained_variance": 0.9, "l0": 12.0, "ce_loss_recovered": 0.95,
                                     "n_tokens": 1500}, token_set="corpus")


def _write_pair_stages(con, lineage: bool = False) -> None:
    from core.corpus import TokenSet

    db.write_token_sets(con, [TokenSet("corpus", tuple(range(100)), (("general", 50), ("medical", 50)), 16),
                              TokenSet("sample-4", (10, 30, 60, 80), (("general", 2), ("medical", 2)), 16)])
    rows = []
    for arm, other in (("base", "finetuned"), ("finetuned", "base")):
        for f in range(D_SAE):
            mine = [(p[1] if arm == "base" else p[0], p[2], p[3]) for p in PAIRS if (p[0] if arm == "base" else p[1]) == f]
            best = max(mine, key=lambda m: m[1]) if mine else None
            kept = [m for m in mine if m[2]]
            rows.append({"arm_a": "base", "arm_b": "finetuned", "arm": arm, "feature": f, "match_arm": other,
                         "match_feature": best[0] if best else (5 if STATUS[arm][f] in ("disappear", "emerge") else None),
                         "match_corr": best[1] if best else (0.4 if STATUS[arm][f] in ("disappear", "emerge") else None),
                         "status": STATUS[arm][f], "n_fired": DIFF_FIRED[arm][f], "n_partners": len(mine),
                         "assigned_feature": kept[0][0] if kept else None,
                         "assigned_corr": kept[0][1] if kept else None,
                         "same_index_corr": SAME_INDEX[f][0] if lineage and f in SAME_INDEX else None,
                         "same_index_cos": SAME_INDEX[f][1] if lineage and f in SAME_INDEX else None,
                         "decoder_cos": None, "logit_sim": None})  # no decoders here
    pairs = pa.table({"arm_a": ["base"] * len(PAIRS),
                      "feature_a": [p[0] for p in PAIRS], "arm_b": ["finetuned"] * len(PAIRS),
                      "feature_b": [p[1] for p in PAIRS], "corr": [p[2] for p in PAIRS], "assigned": [p[3] for p in PAIRS]})
    _write(con, ("base", "finetuned"), "matching",
           {"feature_matches": pa.Table.from_pylist(rows), "match_pairs": pairs},
           {"threshold": 0.8, "min_firings": 10, "n_tokens": 60, "n_pairs": 4, "n_assigned": 2,
            "assigned_corr_total": 1.85} | ({"same_index_share_a": 0.5, "same_index_share_b": SAME_INDEX_SHARE}
                                            if lineage else {}), token_set="sample-4")
    transfer = [("base", "base", 0.25), ("base", "finetuned", 0.3), ("finetuned", "finetuned", 0.2),
                ("finetuned", "base", 0.4)]
    table = pa.table({"arm_a": ["base"] * 8, "arm_b": ["finetuned"] * 8, "sae_arm": [t[0] for t in transfer for _ in (0, 1)],
                      "model_arm": [t[1] for t in transfer for _ in (0, 1)],
                      "metric": ["dead_fraction", "l0"] * 4, "value": [v for t in transfer for v in (t[2], 11.0)]})
    _write(con, ("base", "finetuned"), "transfer", {"transfer_metrics": table}, token_set="sample-4")
    _write_divergence(con)


def _write_divergence(con) -> None:
    pair = {"arm_a": "base", "arm_b": "finetuned"}
    kl = [[0.01] * 15 for _ in DIVERGENT_ROWS]
    for k, (_, mean, peak) in enumerate(DIVERGENT_ROWS):
        kl[k][peak] = mean * 15 - 0.01 * 14  # the row's mean is `mean`
    contexts = pa.Table.from_pylist([
        {**pair, "rank": k, "row_index": row, "mean_kl": mean, "max_kl": kl[k][peak], "max_index": peak,
         "token_ids": list(range(15)), "tokens": [f" t{i}" for i in range(15)], "kl": kl[k],
         "logprob_change": [-0.1] * 14 + [None], "boundary": [False] * 15}
        for k, (row, mean, peak) in enumerate(DIVERGENT_ROWS)])
    rows = pa.Table.from_pylist([{**pair, "row_index": row, "mean_kl": mean, "max_kl": kl[k][peak], "max_index": peak}
                                 for k, (row, mean, peak) in enumerate(sorted(DIVERGENT_ROWS))])
    features = pa.Table.from_pylist([
        {**pair, "arm": arm, "feature": f, "mean_divergent": there if f == ENRICHED[arm][0] else 0.0,
         "mean_elsewhere": elsewhere if f == ENRICHED[arm][0] else 0.1,
         "fired_divergent": 4 if f == ENRICHED[arm][0] else 0, "fired_elsewhere": 10}
        for arm, (_, there, elsewhere) in ENRICHED.items() for f in range(D_SAE)])
    _write(con, ("base", "finetuned"), "divergence",
           {"divergence_rows": rows, "divergence_contexts": contexts, "divergence_features": features},
           {"n_tokens": 30, "mean_kl": 0.125, "n_divergent": 1, "divergent_threshold": 2.86, "divergent_share": 0.01},
           token_set="sample-4")

def _write_neighbours(con, arm: str) -> None:
    """Feature f's nearest in its own SAE: f + 1 (cosine 0.9), then f + 2 (cosine 0.5), modulo D_SAE."""
    rows = [(f, rank, (f + 1 + rank) % D_SAE, cos) for f in range(D_SAE) for rank, cos in enumerate((0.9, 0.5))]
    table = pa.table({"arm": [arm] * len(rows), **_columns(rows, ("feature", "rank", "neighbour", "cosine"))})
    _write(con, arm, "neighbours", {"feature_neighbours": table})


def _write_cross_neighbours_and_map(con) -> None:
    """Across arms, feature f's nearest is the other arm's f (cosine 0.99), then f + 1 (0.3). The map puts base's f
    at (f, 0) and finetuned's f at (f, 1)."""
    pair = ("base", "finetuned")
    rows = [(arm, f, rank, other, (f + rank) % D_SAE, cos) for arm, other in (pair, pair[::-1])
            for f in range(D_SAE) for rank, cos in enumerate((0.99, 0.3))]
    names = ("arm", "feature", "rank", "neighbour_arm", "neighbour", "cosine")
    cross = pa.table({"arm_a": ["base"] * len(rows), "arm_b": ["finetuned"] * len(rows), **_columns(rows, names)})
    _write(con, pair, "cross_neighbours", {"cross_neighbours": cross})
    points = [(arm, f, float(f), float(y)) for y, arm in enumerate(pair) for f in range(D_SAE)]
    layout = pa.table({"arm_a": ["base"] * len(points), "arm_b": ["finetuned"] * len(points),
                       **_columns(points, ("arm", "feature", "x", "y"))})
    _write(con, pair, "map", {"feature_map": layout})


def _columns(rows: list[tuple], names: tuple[str, ...]) -> dict[str, list]:
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _fired_tokens(arm: str, n_fired: list[int]) -> dict[str, pa.Table]:
    """Feature f fires 3/4 of its times on its first top token (id 10 + f, which occurs 2x that often in the
    corpus) and 1/4 on the byte token <0x8F> (id 99, 1,000 occurrences)."""
    rows = [(f, rank, token_id, token, count) for f, n in enumerate(n_fired) if n
            for rank, (token_id, token, count) in enumerate([(10 + f, TOP[f][0], n - n // 4), (99, "<0x8F>", n // 4)])]
    fired = pa.table({"arm": [arm] * len(rows), "feature": pa.array([r[0] for r in rows], pa.int32()),
                      "rank": pa.array([r[1] for r in rows], pa.int32()),
                      "token_id": pa.array([r[2] for r in rows], pa.int32()), "token": [r[3] for r in rows],
                      "count": [r[4] for r in rows], "sum_act": [0.5 * r[4] for r in rows]})
    first = {r[2]: (r[3], 2 * r[4]) for r in rows if r[1] == 0}
    unigram = pa.table({"arm": [arm] * (len(first) + 1), "token_id": pa.array([*first, 99], pa.int32()),
                        "token": [t for t, _ in first.values()] + ["<0x8F>"],
                        "count": [c for _, c in first.values()] + [1000]})
    return {"fired_tokens": fired, "unigram": unigram}


def _write(con, owner, stage: str, tables: dict[str, pa.Table], metrics: dict | None = None,
           token_set: str | None = None) -> None:
    """write_stage after the precompute's schema check of every table."""
    db.write_stage(con, owner, stage, "k", 0.0, {name: conform(TABLES[name], table, f"tiny_db {stage}")
                                                 for name, table in tables.items()}, metrics, token_set=token_set)


def _per_feature(table: str, arm: str, **columns: list) -> pa.Table:
    """One arm's rows of a per-feature table: every declared column given (a forgotten one fails, naming it)."""
    names = [name for name, _ in table_columns(table)][2:]
    missing = [name for name in names if name not in columns]
    if missing:
        raise ValueError(f"tiny_db: {table} needs {', '.join(missing)} (core.database.feature_fields)")
    return pa.table({"arm": [arm] * D_SAE, "feature": np.arange(D_SAE, dtype=np.int32),
                     **{name: columns[name] for name in names}}, schema=TABLES[table].schema)
