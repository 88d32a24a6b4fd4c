"""The dashboard's queries on a synthetic database of the real study's size: 24,576 + 12,288 features.

Timed: the Features page's filter query (a page of 50 with the total count; plain, with a word search, with
ranges and a label filter) and the Feature page's queries (row, tokens, histogram, top and interval contexts)
for 50 random features, median and p95. Targets (issue #5): filter ≤ 100 ms, feature page ≤ 300 ms p95.
Reference in the same run: the same filter done in pandas over the whole features table read into memory.
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from core import database as db
from core.activations import HIST_EDGES, INTERVAL_EDGES
from core.database import queries

ARMS = {"base": 24_576, "finetuned": 12_288}
K, N_TOP, N_INTERVAL, WINDOW = 10, 20, 12, 17
WORDS = ["heart", "kidney", "lung", "blood", "the", "of", "and", "walk", "brain", "cell", "tumor", "river"]


def _arm_tables(arm: str, d_sae: int, rng: np.random.Generator) -> dict[str, dict[str, pa.Table]]:
    feature = np.arange(d_sae, dtype=np.int32)
    n_tok = d_sae * K * 2
    tokens = np.array([" " + w for w in WORDS] + [f" tok{i}" for i in range(500)], dtype=object)
    top_ids = rng.integers(0, len(tokens), n_tok)
    top = pa.table({"arm": [arm] * n_tok, "feature": np.repeat(feature, 2 * K),
                    "kind": np.tile(np.repeat(["top", "bottom"], K), d_sae), "rank": np.tile(np.arange(K), 2 * d_sae),
                    "token_id": top_ids.astype(np.int32), "token": tokens[top_ids].tolist(),
                    "value": rng.normal(size=n_tok).astype(np.float32)})
    matches = rng.poisson(0.3, d_sae).astype(np.int32)
    top_text = tokens[top_ids].reshape(d_sae, 2 * K)[:, :K]
    words = pa.table({"arm": [arm] * d_sae, "feature": feature, "coherence": rng.uniform(-0.2, 0.9, d_sae),
                      "n_valid": np.full(d_sae, 8, np.int32), "med_matches": matches, "is_candidate": matches >= 2,
                      "top_text": [" | ".join(row) for row in top_text],
                      "top_words": [sorted({t.strip() for t in row}) for row in top_text]})
    density = 10 ** rng.uniform(-6, -1, d_sae)
    acts = pa.table({"arm": [arm] * d_sae, "feature": feature, "n_fired": (density * 1e6).astype(np.int64),
                     "frac_nonzero": density, "max_act": rng.uniform(0, 50, d_sae).astype(np.float32),
                     "mean_act": rng.uniform(0, 5, d_sae), "sum_act": density, "sum_sq_act": density})
    hist = pa.table({"arm": [arm] * d_sae, "feature": feature,
                     "counts": pa.array(list(rng.integers(0, 100, (d_sae, len(HIST_EDGES) - 1))))})
    return {"projection": {"top_tokens": top}, "words": {"feature_words": words},
            "activations": {"feature_activations": acts, "histograms": hist,
                            "contexts": _contexts(arm, d_sae, rng)}}


def _contexts(arm: str, d_sae: int, rng: np.random.Generator) -> pa.Table:
    n = d_sae * (N_TOP + N_INTERVAL)
    per_feature = N_TOP + N_INTERVAL
    kind = np.tile(np.array(["top"] * N_TOP + ["interval"] * N_INTERVAL), d_sae)
    interval = np.tile(np.r_[np.full(N_TOP, -1), np.repeat(np.arange(3), 4)], d_sae)
    offsets = np.arange(0, (n + 1) * WINDOW, WINDOW, dtype=np.int32)
    token_text = pa.array(np.array([" tok", " heart", " and", " the"], dtype=object)[rng.integers(0, 4, n * WINDOW)])
    return pa.table({
        "arm": [arm] * n, "feature": np.repeat(np.arange(d_sae, dtype=np.int32), per_feature), "kind": kind,
        "rank": np.tile(np.r_[np.arange(N_TOP), np.tile(np.arange(4), 3)], d_sae).astype(np.int32),
        "interval": pa.array(np.where(interval < 0, None, interval), pa.int32()),
        "interval_low": pa.array(np.where(interval < 0, np.nan, INTERVAL_EDGES[np.maximum(interval, 0)]),
                                 from_pandas=True),
        "interval_high": pa.array(np.where(interval < 0, np.nan, INTERVAL_EDGES[np.maximum(interval, 0) + 1]),
                                  from_pandas=True),
        "max_act": rng.uniform(0, 50, n).astype(np.float32), "row_index": rng.integers(0, 7000, n).astype(np.int32),
        "max_pos": np.full(n, 60, np.int32), "max_index": np.full(n, 12, np.int32),
        "token_ids": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 50257, n * WINDOW).astype(np.int32))),
        "tokens": pa.ListArray.from_arrays(offsets, token_text),
        "acts": pa.ListArray.from_arrays(offsets, pa.array(rng.uniform(0, 5, n * WINDOW).astype(np.float32))),
    })


def build(path: Path) -> None:
    rng = np.random.default_rng(0)
    con, _ = db.open_build(path)
    db.write_study(con, "bench", "", "{}", "h", "{}", HIST_EDGES.tolist(), INTERVAL_EDGES.tolist())
    for position, (arm, d_sae) in enumerate(ARMS.items()):
        db.write_arm(con, {"arm": arm, "position": position, "d_sae": d_sae, "sae_fingerprint": arm})
        for stage, tables in _arm_tables(arm, d_sae, rng).items():
            db.write_stage(con, arm, stage, "k", 0.0, tables)
    db.publish(con, path)


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def run() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.duckdb"
        build(path)
        con = db.connect_read_only(path)
        labels = pd.DataFrame({"arm": ["base"] * 500, "feature": np.arange(500), "label": ["medical"] * 500})
        arms = tuple(ARMS)
        filters = {
            "plain": queries.FeatureFilter(arms=arms),
            "word search": queries.FeatureFilter(arms=arms, word="heart"),
            "ranges + matches + labelled": queries.FeatureFilter(arms=arms, coherence_min=0.3, min_matches=1,
                                                                 density_min=1e-4, label_status="labelled"),
        }
        rows = []
        whole = con.execute("SELECT * FROM features").df()
        reference = _timed(lambda i: whole[(whole.coherence >= 0.3) & (whole.med_matches >= 1)
                                           & (whole.frac_nonzero >= 1e-4)].sort_values("coherence").head(50), 20)
        for name, flt in filters.items():
            times = _timed(lambda i: queries.features_page(con, flt, labels, "coherence", True, 50, 50 * (i % 5)), 20)
            rows.append({"name": f"filter: {name} (p95)", "seconds": _p95(times), "median_seconds":
                         statistics.median(times), "target_seconds": 0.1, "reference": "pandas, table in memory",
                         "reference_seconds": statistics.median(reference),
                         "ratio": statistics.median(times) / statistics.median(reference)})
        rng = np.random.default_rng(1)
        picks = [(arm, int(rng.integers(0, ARMS[arm]))) for arm in rng.choice(arms, 50)]

        def feature_page(i: int) -> None:
            arm, feature = picks[i]
            queries.feature_row(con, arm, feature)
            queries.feature_tokens(con, arm, feature)
            queries.feature_histogram(con, arm, feature)
            queries.feature_contexts(con, arm, feature, "top")
            queries.feature_contexts(con, arm, feature, "interval")

        times = _timed(feature_page, 50)
        rows.append({"name": "feature page, 5 queries (p95)", "seconds": _p95(times),
                     "median_seconds": statistics.median(times), "target_seconds": 0.3})
        con.close()
        return rows
