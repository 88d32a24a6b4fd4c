"""A family's features database by hand: arms base, A, B, M and the four pairs' matching from
tests/core/test_family.py's ROWS (threshold 0.8), plus a one-pair study for the refusals."""

from pathlib import Path

import pyarrow as pa

from core import database as db
from core.activations import HIST_EDGES, INTERVAL_EDGES

FAMILY_PAIRS = [("base", "A"), ("base", "B"), ("A", "M"), ("B", "M")]
D_SAE = {"base": 6, "A": 6, "B": 5, "M": 6}


def write_family_db(path: Path, rows: list[tuple], pairs=FAMILY_PAIRS, d_sae=D_SAE) -> Path:
    """rows: (arm, feature, match_arm, best match, corr, status, assigned partner) as in test_family.ROWS."""
    con, _ = db.open_build(path)
    db.write_study(con, "family", "", "{}", "hash", "{}", HIST_EDGES.tolist(), INTERVAL_EDGES.tolist())
    for position, arm in enumerate(d_sae):
        db.write_arm(con, {"arm": arm, "position": position, "model": f"m/{arm}", "sae_source": f"s/{arm}",
                           "hook_name": "blocks.0.hook_mlp_out", "d_in": 8, "d_sae": d_sae[arm], "d_vocab": 100,
                           "n_layers": 1, "device": "cpu", "model_fingerprint": f"m-{arm}",
                           "sae_fingerprint": f"s-{arm}", "processing_json": "{}"})
    db.write_pairs(con, list(pairs))
    for earlier, later in pairs:
        mine = [r for r in rows if {r[0], r[2]} == {earlier, later}]
        if not mine:  # the pair's matching did not run (or was skipped)
            continue
        table = pa.Table.from_pylist([
            {"arm_a": earlier, "arm_b": later, "arm": arm, "feature": f, "match_arm": other, "match_feature": match,
             "match_corr": corr, "status": status, "n_fired": 0 if status == "dead" else 50, "n_partners": 1,
             "assigned_feature": assigned, "assigned_corr": corr if assigned is not None else None}
            for arm, f, other, match, corr, status, assigned in mine])
        db.write_stage(con, (earlier, later), "matching", "k", 0.0, {"feature_matches": table},
                       {"threshold": 0.8}, owns=("feature_matches", "match_pairs"))
    db.publish(con, path)
    return path


# The proxy test's stored facts: a corpus of 1,000 tokens per arm where "=" (id 7) is 20; merge #3 puts 60 of its
# 70 activation on "=" (LLR ln(0.857 / 0.02) = 3.758), A #4 30 of 60 (ln(0.5 / 0.02) = 3.219), B #0 none (-inf).
PROXY_FIRED = {("M", 3): ([(7, "=", 20, 60.0), (11, " x", 1, 1.0)], 70.0), ("A", 4): ([(7, "=", 10, 30.0)], 60.0),
               ("B", 0): ([(12, "y", 5, 5.0)], 5.0)}
UNIGRAM = [(7, "=", 20), (11, " x", 20), (12, "y", 960)]


def write_proxy_facts(path: Path) -> None:
    import duckdb

    con = duckdb.connect(str(path))
    for (arm, feature), (fired, total) in PROXY_FIRED.items():
        con.execute("INSERT INTO feature_activations (arm, feature, sum_act) VALUES (?, ?, ?)", [arm, feature, total])
        for rank, (token_id, token, count, act) in enumerate(fired):
            con.execute("INSERT INTO fired_tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [arm, feature, rank, token_id, token, count, act])
    for arm in D_SAE:
        for token_id, token, count in UNIGRAM:
            con.execute("INSERT INTO unigram VALUES (?, ?, ?, ?)", [arm, token_id, token, count])
    con.close()
