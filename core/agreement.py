"""Agreement between annotators, and the consensus rule the dashboard counts labels by.

Input frames come from `core.labels`: one row per annotator per feature (`annotator_labels`: arm, feature,
sae_fingerprint, author, label, note, labelled_at, id) and one row per adjudicated feature (`adjudications`, the
same columns). A feature is the triple (arm, feature, sae_fingerprint): labels of another SAE are other features.

Cohen's κ for two annotators over the features both labelled (Cohen 1960):
    p_o = share of features they gave the same label,  p_e = Σ_label p_first(label) · p_second(label),
    κ = (p_o − p_e) / (1 − p_e)
1 is perfect agreement, 0 what two annotators guessing with their own label frequencies would reach; κ is
undefined (NaN) when p_e = 1, i.e. both gave one and the same label to every shared feature.
Per label, κ is one-vs-rest: each annotator's labels read as "that label" or "another label".
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import duckdb
import numpy as np
import pandas as pd

FEATURE_KEY = ["arm", "feature", "sae_fingerprint"]
ALL_LABELS = "all labels"
TIE_LABEL = "unsure"
CONSENSUS_RULE = ("an adjudicated label wins; otherwise the label most annotators gave (each annotator's latest "
                  "label counts once); a tie for the most counts as unsure until someone adjudicates")
# How a consensus label was reached, in the order the Overview lists them.
RULES = ("adjudicated", "unanimous", "majority", "tie", "one annotator")
CONSENSUS_COLUMNS = [*FEATURE_KEY, "label", "note", "author", "labelled_at", "id", "rule", "annotators", "votes"]


def confusion(first: Sequence[str], second: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """[len(labels), len(labels)] counts: row = the first annotator's label, column = the second's, per feature."""
    if len(first) != len(second):
        raise ValueError(f"two annotators' labels must pair up feature by feature: {len(first)} != {len(second)}")
    index = {label: i for i, label in enumerate(labels)}
    rows = np.fromiter((index[a] for a in first), dtype=np.int64, count=len(first))
    cols = np.fromiter((index[b] for b in second), dtype=np.int64, count=len(second))
    table = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(table, (rows, cols), 1)
    return table


def kappa_from_table(table: np.ndarray) -> float:
    """Cohen's κ of a square confusion table of counts (see the module docstring); NaN if empty or p_e = 1."""
    n = table.sum()
    if n == 0:
        return float("nan")
    observed = np.trace(table) / n
    expected = float((table.sum(axis=1) / n) @ (table.sum(axis=0) / n))
    if np.isclose(expected, 1.0):
        return float("nan")
    return float((observed - expected) / (1.0 - expected))


def cohen_kappa(first: Sequence[str], second: Sequence[str], labels: Sequence[str]) -> float:
    """Cohen's κ of two annotators' labels of the same features, in the same order."""
    return kappa_from_table(confusion(first, second, labels))


def _shared(votes: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """The features both annotators labelled: FEATURE_KEY, label_a, label_b."""
    left = votes[votes["author"] == a][[*FEATURE_KEY, "label"]]
    right = votes[votes["author"] == b][[*FEATURE_KEY, "label"]]
    return left.merge(right, on=FEATURE_KEY, suffixes=("_a", "_b"))


def pair_agreement(votes: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Per pair of annotators (alphabetical) and per label (ALL_LABELS first, then each label one-vs-rest):
    annotator_a, annotator_b, label, features (both labelled), agreement (p_o), kappa. Empty below 2 annotators."""
    rows = []
    for a, b in combinations(sorted(votes["author"].unique()), 2):
        shared = _shared(votes, a, b)
        if shared.empty:
            continue
        first, second = shared["label_a"].tolist(), shared["label_b"].tolist()
        table = confusion(first, second, labels)
        rows.append({"annotator_a": a, "annotator_b": b, "label": ALL_LABELS, "features": len(shared),
                     "agreement": np.trace(table) / len(shared), "kappa": kappa_from_table(table)})
        for label in labels:
            one_vs_rest = confusion([x == label for x in first], [x == label for x in second], [True, False])
            rows.append({"annotator_a": a, "annotator_b": b, "label": label, "features": len(shared),
                         "agreement": np.trace(one_vs_rest) / len(shared), "kappa": kappa_from_table(one_vs_rest)})
    return pd.DataFrame(rows, columns=["annotator_a", "annotator_b", "label", "features", "agreement", "kappa"])


_DISAGREEMENTS_SQL = """
SELECT v.*, a.label AS adjudicated
FROM (SELECT arm, feature, sae_fingerprint, count(*) AS annotators,
             string_agg(author || ': ' || label, ' · ' ORDER BY author) AS votes
      FROM votes GROUP BY arm, feature, sae_fingerprint HAVING count(DISTINCT label) > 1) v
LEFT JOIN adjudications a USING (arm, feature, sae_fingerprint)
ORDER BY arm, feature, sae_fingerprint"""


def _on_frames(sql: str, votes: pd.DataFrame, adjudications: pd.DataFrame) -> pd.DataFrame:
    """Run SQL over the relations `votes` and `adjudications` (DataFrames with core.labels' columns)."""
    with duckdb.connect() as con:
        con.register("votes", votes)
        con.register("adjudications", adjudications)
        return con.execute(sql).df()


def disagreements(votes: pd.DataFrame, adjudications: pd.DataFrame) -> pd.DataFrame:
    """Features at least two annotators labelled differently: FEATURE_KEY, annotators, votes ("ann: medical · bob:
    unsure"), adjudicated (the adjudicated label, or None while it waits for one); by arm and feature."""
    out = _on_frames(_DISAGREEMENTS_SQL, votes, adjudications)
    out["adjudicated"] = out["adjudicated"].astype(object).where(out["adjudicated"].notna(), None)
    return out


# CONSENSUS_RULE over two relations with core.labels' columns: `votes` (each annotator's latest label of a feature)
# and `adjudications` (each feature's latest adjudication). SQL, so core.labels runs it in the connection that
# reads the events (a page asks for the team's labels several times a run); `consensus` runs it on DataFrames.
CONSENSUS_SQL = """
WITH per_label AS (
    SELECT arm, feature, sae_fingerprint, label, count(*) AS backers, max(id) AS id,
           string_agg(author, ', ' ORDER BY author) AS author
    FROM votes GROUP BY arm, feature, sae_fingerprint, label),
per_feature AS (
    SELECT arm, feature, sae_fingerprint, count(*) AS annotators, max(id) AS latest_id,
           string_agg(author || ': ' || label, ' · ' ORDER BY author) AS votes,
           string_agg(author, ', ' ORDER BY author) AS everyone
    FROM votes GROUP BY arm, feature, sae_fingerprint),
most AS (  -- the labels most annotators gave
    SELECT * FROM per_label QUALIFY backers = max(backers) OVER (PARTITION BY arm, feature, sae_fingerprint)),
leaders AS (  -- more than one is a tie
    SELECT *, count(*) OVER (PARTITION BY arm, feature, sae_fingerprint) AS n_leaders FROM most),
team AS (
    SELECT f.arm, f.feature, f.sae_fingerprint, f.annotators, f.votes,
           CASE WHEN l.n_leaders > 1 THEN '{tie}' ELSE l.label END AS label,
           CASE WHEN l.n_leaders > 1 THEN f.everyone ELSE l.author END AS author,
           CASE WHEN l.n_leaders > 1 THEN f.latest_id ELSE l.id END AS id,
           CASE WHEN l.n_leaders > 1 THEN 'tie' WHEN f.annotators = 1 THEN 'one annotator'
                WHEN l.backers = f.annotators THEN 'unanimous' ELSE 'majority' END AS rule
    FROM per_feature f JOIN leaders l USING (arm, feature, sae_fingerprint)
    QUALIFY row_number() OVER (PARTITION BY f.arm, f.feature, f.sae_fingerprint ORDER BY l.label) = 1)
SELECT arm, feature, sae_fingerprint,
       CASE WHEN a.id IS NULL THEN t.label ELSE a.label END AS label,
       CASE WHEN a.id IS NOT NULL THEN a.note WHEN t.rule = 'tie' THEN '' ELSE e.note END AS note,
       CASE WHEN a.id IS NULL THEN t.author ELSE a.author END AS author,
       CASE WHEN a.id IS NULL THEN e.labelled_at ELSE a.labelled_at END AS labelled_at,
       CASE WHEN a.id IS NULL THEN t.id ELSE a.id END AS id,
       CASE WHEN a.id IS NULL THEN t.rule ELSE 'adjudicated' END AS rule,
       coalesce(t.annotators, 0) AS annotators, coalesce(t.votes, '') AS votes
FROM team t FULL JOIN adjudications a USING (arm, feature, sae_fingerprint)
LEFT JOIN votes e ON e.id = t.id
ORDER BY arm, feature, sae_fingerprint""".format(tie=TIE_LABEL)


def consensus(votes: pd.DataFrame, adjudications: pd.DataFrame) -> pd.DataFrame:
    """One label per feature by CONSENSUS_RULE: CONSENSUS_COLUMNS (author: who backs the label, comma-separated;
    id: the latest event behind it; rule: one of RULES; votes: every annotator's label), by arm and feature."""
    return _on_frames(CONSENSUS_SQL, votes, adjudications)


def label_counts(consensus_labels: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Per arm: how many features carry each consensus label, and how many labels were reached by each rule."""
    columns = ["arm", *labels, *RULES]
    if consensus_labels.empty:
        return pd.DataFrame(columns=columns)
    by_label = pd.crosstab(consensus_labels["arm"], consensus_labels["label"])
    by_rule = pd.crosstab(consensus_labels["arm"], consensus_labels["rule"])
    out = by_label.join(by_rule).reindex(columns=columns[1:], fill_value=0).fillna(0).astype(int)
    return out.reset_index()[columns]
