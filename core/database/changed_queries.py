"""The "What changed" page's reads (issue 22): one pair's difference lens, the base SAE's features ranked by how
their activations change, the persisting features whose output moved, and medical candidates by fate. Every read
names its pair (arm_a, arm_b); `core.database.queries` re-exports them for the pages."""

from __future__ import annotations

import duckdb
import pandas as pd

Pair = tuple[str, str]


def lens_sites(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """One row per site and kind of the pair's difference lens (no vectors): hook_name, layer, kind, n_positions,
    n_tokens, norm, norm_a, norm_b, medical_top20_a / _b and the random directions' mean counts, deepest site first."""
    return con.execute("""
        SELECT hook_name, layer, kind, n_positions, n_tokens, norm, norm_a, norm_b, medical_top20_a, medical_top20_b,
               random_medical_top20_a, random_medical_top20_b
        FROM diff_lens WHERE arm_a = ? AND arm_b = ? ORDER BY layer DESC, kind <> 'first'""", list(pair)).df()


def lens_vector(con: duckdb.DuckDBPyConnection, pair: Pair, hook_name: str, kind: str) -> tuple[list[float], float,
                                                                                            float] | None:
    """(vector, norm, model a's mean activation norm there) of one site and kind, or None."""
    row = con.execute("SELECT vector, norm, norm_a FROM diff_lens WHERE arm_a = ? AND arm_b = ? AND hook_name = ? "
                      "AND kind = ?", [*pair, hook_name, kind]).fetchone()
    return None if row is None else (list(row[0]), float(row[1]), float(row[2]))


def lens_tokens(con: duckdb.DuckDBPyConnection, pair: Pair, hook_name: str, kind: str,
                unembed_arm: str) -> pd.DataFrame:
    """direction ("top" / "bottom"), rank, token, logit, is_medical of one site, kind and unembedding."""
    return con.execute("""
        SELECT direction, rank, token_id, token, logit, is_medical FROM diff_lens_tokens
        WHERE arm_a = ? AND arm_b = ? AND hook_name = ? AND kind = ? AND unembed_arm = ?
        ORDER BY direction DESC, rank""", [*pair, hook_name, kind, unembed_arm]).df()


def lens_features(con: duckdb.DuckDBPyConnection, pair: Pair, kind: str) -> pd.DataFrame:
    """sae_arm, direction, rank, feature, cosine, top_text, is_candidate: the SAE features whose decoder directions
    the lens vector at the SAE's hook aligns with most."""
    return con.execute("""
        SELECT l.sae_arm, l.direction, l.rank, l.feature, l.cosine, w.top_text, w.is_candidate
        FROM diff_lens_features l LEFT JOIN feature_words w ON w.arm = l.sae_arm AND w.feature = l.feature
        WHERE l.arm_a = ? AND l.arm_b = ? AND l.kind = ? ORDER BY l.sae_arm <> l.arm_a, l.direction DESC, l.rank""",
                       [*pair, kind]).df()


_FIRED_TEXT = """(SELECT arm, feature, string_agg(token, ' | ' ORDER BY rank) AS fired_text FROM fired_tokens
                  WHERE rank < 6 GROUP BY arm, feature)"""


def changed_features(con: duckdb.DuckDBPyConnection, pair: Pair, direction: str, limit: int = 20,
                     control: str | None = None) -> pd.DataFrame:
    """arm_a's SAE features ranked by how their activation changes from model a to model b (`direction`:
    "increase" or "decrease"): feature, change, mean_a, mean_b, frac_a, frac_b, q, fired_text (what it fires on in
    a), top_text, is_candidate, and with a control arm the same feature's change on the control pair."""
    rank = "rank_increase" if direction == "increase" else "rank_decrease"  # one of two constants
    return con.execute(f"""
        SELECT c.feature, c.change, c.mean_a, c.mean_b, c.frac_a, c.frac_b, c.q, f.fired_text, w.top_text,
               w.is_candidate, k.change AS control_change
        FROM feature_change c
        LEFT JOIN feature_words w ON w.arm = c.arm_a AND w.feature = c.feature
        LEFT JOIN {_FIRED_TEXT} f ON f.arm = c.arm_a AND f.feature = c.feature
        LEFT JOIN feature_change k ON k.arm_a = c.arm_a AND k.arm_b = ? AND k.feature = c.feature
        WHERE c.arm_a = ? AND c.arm_b = ? AND c.{rank} IS NOT NULL ORDER BY c.{rank} LIMIT ?""",
                       [control, *pair, limit]).df()


def change_enrichment(con: duckdb.DuckDBPyConnection, pair: Pair, top: int = 50) -> dict[str, float]:
    """Medical candidates among arm_a's features that fired: `top_increase` share among the `top` most increased,
    `live` share among all live ones, their ratio `enrichment`, and the counts."""
    row = con.execute("""
        WITH live AS (SELECT c.feature, c.rank_increase, coalesce(w.is_candidate, false) AS candidate
                      FROM feature_change c JOIN feature_words w ON w.arm = c.arm_a AND w.feature = c.feature
                      WHERE c.arm_a = ? AND c.arm_b = ? AND (c.n_fired_a > 0 OR c.n_fired_b > 0))
        SELECT count(*) FILTER (WHERE rank_increase < ? AND candidate), count(*) FILTER (WHERE rank_increase < ?),
               count(*) FILTER (WHERE candidate), count(*) FROM live""", [*pair, top, top]).fetchone()
    top_candidates, n_top, candidates, n_live = (int(v) for v in row)
    top_share = top_candidates / n_top if n_top else float("nan")
    live_share = candidates / n_live if n_live else float("nan")
    return {"top_candidates": top_candidates, "n_top": n_top, "candidates": candidates, "n_live": n_live,
            "top_increase": top_share, "live": live_share,
            "enrichment": top_share / live_share if live_share else float("nan")}


def moved_persisting(con: duckdb.DuckDBPyConnection, pair: Pair, limit: int = 15) -> pd.DataFrame:
    """arm_b's persisting features whose decoder direction turned most from their best match in arm_a (lowest
    decoder cosine first), one per partner (many fine-tuned features can share one base partner: the one that turned
    most stands for them): feature, match_feature, match_corr, decoder_cos, logit_sim, top_text_b / top_text_a
    (their logit-lens tokens), candidate_b / candidate_a."""
    return con.execute("""
        SELECT m.feature, m.match_feature, m.match_corr, m.decoder_cos, m.logit_sim, wb.top_text AS top_text_b,
               wa.top_text AS top_text_a, wb.is_candidate AS candidate_b, wa.is_candidate AS candidate_a
        FROM feature_matches m
        LEFT JOIN feature_words wb ON wb.arm = m.arm AND wb.feature = m.feature
        LEFT JOIN feature_words wa ON wa.arm = m.match_arm AND wa.feature = m.match_feature
        WHERE m.arm_a = ? AND m.arm_b = ? AND m.arm = ? AND m.status = 'persist' AND m.decoder_cos IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY m.match_feature ORDER BY m.decoder_cos, m.feature) = 1
        ORDER BY m.decoder_cos, m.feature LIMIT ?""", [*pair, pair[1], limit]).df()


def candidates_by_fate(con: duckdb.DuckDBPyConnection, pair: Pair) -> pd.DataFrame:
    """Per fate of arm_b's features (persist, emerge) and for the distinct arm_a partners of the persisting ones
    ("partners"): features, candidates, share (the medical signal may sit in persisting features whose output moved)."""
    return con.execute("""
        WITH b AS (SELECT m.status AS fate, m.feature, m.match_feature, coalesce(w.is_candidate, false) AS candidate
                   FROM feature_matches m LEFT JOIN feature_words w ON w.arm = m.arm AND w.feature = m.feature
                   WHERE m.arm_a = ? AND m.arm_b = ? AND m.arm = ? AND m.status IN ('persist', 'emerge')),
             partners AS (SELECT DISTINCT b.match_feature AS feature, coalesce(w.is_candidate, false) AS candidate
                          FROM b LEFT JOIN feature_words w ON w.arm = ? AND w.feature = b.match_feature
                          WHERE b.fate = 'persist')
        SELECT fate, count(*) AS features, count(*) FILTER (WHERE candidate) AS candidates FROM b GROUP BY fate
        UNION ALL SELECT 'partners', count(*), count(*) FILTER (WHERE candidate) FROM partners
        ORDER BY list_position(['persist', 'partners', 'emerge'], fate)""", [*pair, pair[1], pair[0]]).df().assign(
        share=lambda f: f["candidates"] / f["features"].where(f["features"] > 0))
