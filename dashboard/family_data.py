"""The Family page's reads and charts: the study's model families (core.family), their flows, the SLERP curve
stored beside the merge, a feature's lineage and the proxy test (core.proxy_test) along it.

Reads go through dashboard.reads.connection.study_read (the SQL is core.database.family_queries); charts are
functions of plain values -> plotly figure. Session-state keys of the page are the FAMILY_* constants here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from core.database import family_queries
from core.family import Family, family_counts, family_flows, find_families, lineage
from core.merge_curve import SlerpCurve, read_curve
from core.proxy_test import llr_from_fired_tokens
from dashboard.reads.connection import study_read
from dashboard.study import study_config

FAMILY_PICK = "family_pick"
FAMILY_ONE_TO_ONE = "family_one_to_one"
FAMILY_FLOW = "family_flow"
FAMILY_ARM = "family_arm"
FAMILY_FEATURE = "family_feature"
FAMILY_HYPOTHESIS = "family_hypothesis"

declared_pairs = study_read(family_queries.declared_pairs)
study_arms = study_read(family_queries.study_arms)
match_sides = study_read(family_queries.match_sides, max_entries=8)
proxy_inputs = study_read(family_queries.proxy_inputs, missing=None)


def families() -> list[Family]:
    """The families the study's declared pairs form (base→A, base→B, A→merge, B→merge)."""
    arms = study_arms()
    return [family.check(arms) for family in find_families(declared_pairs())]


def flows_frame(family: Family, one_to_one: bool) -> pd.DataFrame:
    """The Sankey's links: source, target, arm (whose features it counts), count, share (of that arm's d_sae at the
    flow's start: the base's for base → A, A's for A → merge), features (their ids)."""
    flows = family_flows(family, match_sides(family), one_to_one)
    rows = []
    for flow in flows["flows"]:
        rows.append({"source": flow.source, "target": flow.target, "arm": flow.arm, "count": flow.count,
                     "share": flow.count / max(flows["d_sae"][flow.start], 1), "features": flow.features.tolist()})
    return pd.DataFrame(rows)


def counts(family: Family, one_to_one: bool):
    return family_counts(family, match_sides(family), one_to_one)


def slerp_curve(family: Family) -> SlerpCurve | None:
    """The curve the family build stored beside the merged model (slerp_curve.json), if the merge arm's model is a
    local folder holding one."""
    arm = next((a for a in study_config().arms if a.name == family.merge), None)
    folder = Path(arm.model) if arm is not None and arm.model else None
    return read_curve(folder) if folder is not None and folder.is_dir() else None


def lineage_frame(family: Family, arm: str, feature: int, one_to_one: bool) -> pd.DataFrame:
    """arm, feature, partner_arm, partner (-1: none at the threshold), corr (the best match's), persists."""
    steps = lineage(family, match_sides(family), arm, feature, one_to_one)
    return pd.DataFrame([vars(step) for step in steps],
                        columns=["arm", "feature", "partner_arm", "partner", "corr", "persists"])


def proxy_along(steps: pd.DataFrame, arm: str, feature: int, tokens: tuple[str, ...]) -> pd.DataFrame:
    """The proxy test's LLR for the hypothesis tokens in every arm the lineage reaches (the start feature and each
    persisting partner): arm, feature, llr, lower_bound; a blank llr where that arm's corpus lacks the tokens or the
    feature never fired."""
    reached = [(arm, feature)] + [(r.partner_arm, int(r.partner)) for r in steps.itertuples() if r.partner >= 0]
    rows = []
    for where, index in dict.fromkeys(reached):
        inputs = proxy_inputs(where, index, tokens)
        llr, bound = None, False
        if inputs and inputs["unigram"] and inputs["act_total"] > 0:
            result = llr_from_fired_tokens(inputs["fired"], inputs["act_total"], inputs["unigram"],
                                           inputs["n_tokens"], inputs["unigram"].keys())
            llr, bound = result.llr, result.lower_bound
        rows.append({"arm": where, "feature": index, "llr": llr, "lower_bound": bound})
    return pd.DataFrame(rows, columns=["arm", "feature", "llr", "lower_bound"])


def scores_by_fate(family: Family, one_to_one: bool) -> pd.DataFrame:
    """Figure 6: the explained features of each fine-tune (core.explanations, this SAE's), with whether each
    persists into the merge: arm, feature, fate ("persists into <merge>" / "does not"), simulation (Pearson r of
    the simulated against the true activations)."""
    from dashboard.data import current_explanations

    explained = current_explanations()
    sides = match_sides(family)
    rows = []
    for arm in (family.a, family.b):
        side = sides.get((arm, family.merge))
        if side is None:
            continue
        mine = explained[(explained["arm"] == arm) & explained["simulation"].notna()]
        for feature, score in zip(mine["feature"].astype(int), mine["simulation"].astype(float)):
            if feature < side.d_sae and side.live[feature]:
                persists = side.partner(one_to_one)[feature] >= 0
                rows.append({"arm": arm, "feature": feature, "simulation": score,
                             "fate": f"persists into {family.merge}" if persists else "does not"})
    return pd.DataFrame(rows, columns=["arm", "feature", "fate", "simulation"])


def fate_histogram(scores: pd.DataFrame) -> go.Figure:
    """The simulation scores of persisting against other features, one panel per fine-tune (the paper's Figure 6)."""
    figure = go.Figure()
    for (arm, fate), group in scores.groupby(["arm", "fate"], sort=True):
        figure.add_histogram(x=group["simulation"], name=f"{arm}: {fate} ({len(group)})", opacity=0.6,
                             xbins={"start": -1.0, "end": 1.0, "size": 0.1})
    figure.update_layout(barmode="overlay", height=300, xaxis_title="simulation score (Pearson r)",
                         yaxis_title="features", margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return figure


def sankey(flows: pd.DataFrame) -> go.Figure:
    """Figure 2: the features that persist from the base into each fine-tune, and the merge's features traced to
    each fine-tune's features that came from the base or emerged there; each link labelled with its count and
    share."""
    nodes = list(dict.fromkeys([*flows["source"], *flows["target"]]))
    index = {name: i for i, name in enumerate(nodes)}
    labels = [f"{c:,} ({100 * s:.0f}%)" for c, s in zip(flows["count"], flows["share"])]
    figure = go.Figure(go.Sankey(
        node={"label": nodes, "pad": 18},
        link={"source": [index[s] for s in flows["source"]], "target": [index[t] for t in flows["target"]],
              "value": flows["count"].tolist(), "label": labels,
              "hovertemplate": "%{source.label} → %{target.label}: %{label}<extra></extra>"}))
    figure.update_layout(height=360, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return figure


def slerp_chart(curve: SlerpCurve) -> go.Figure:
    """Figure 5: each domain's held-out next-token accuracy along t, the chosen t, the base's accuracies dashed."""
    figure = go.Figure()
    for name, values, base, colour in ((curve.domain_a, curve.accuracy_a, curve.base_accuracy_a, "#1f77b4"),
                                       (curve.domain_b, curve.accuracy_b, curve.base_accuracy_b, "#ff7f0e")):
        figure.add_scatter(x=curve.ts, y=values, mode="lines+markers", name=name, line={"color": colour})
        if base is not None:
            figure.add_hline(y=base, line={"dash": "dash", "color": colour},
                             annotation_text=f"base on {name}", annotation_position="top left")
    figure.add_vline(x=curve.chosen.t, line={"dash": "dot", "color": "grey"},
                     annotation_text=f"t = {curve.chosen.t:.2f}")
    figure.update_layout(height=320, xaxis_title="SLERP t (0: first fine-tune, 1: second)",
                         yaxis_title="held-out next-token accuracy", margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return figure
