"""The feature map's data: the points with what they are coloured and hovered by, and the feature a click picked.
No Streamlit here, so it is testable; the page is dashboard/views/map.py, the figure charts.feature_map."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

# What a point can be coloured by -> the column of map_points that holds it.
COLOUR_BY = {"arm": "arm", "fate": "fate", "medical candidate": "candidate", "label": "label",
             "coherence": "coherence"}


def map_points(points: pd.DataFrame, labels: pd.DataFrame, explanations: pd.DataFrame | None = None) -> pd.DataFrame:
    """points (reads.neighbours.feature_map) with label (current labels: arm, feature, label), candidate, the explanation
    when a table of them is given (arm, feature, explanation), and the hover text of each point."""
    frame = points.merge(labels[["arm", "feature", "label"]] if len(labels) else
                         pd.DataFrame(columns=["arm", "feature", "label"]), on=["arm", "feature"], how="left")
    if explanations is not None and len(explanations):
        frame = frame.merge(explanations[["arm", "feature", "explanation"]], on=["arm", "feature"], how="left")
    frame["label"] = frame["label"].fillna("unlabelled")
    frame["fate"] = frame["fate"].fillna("no fate")
    frame["candidate"] = frame["is_candidate"].map({True: "candidate", False: "not a candidate"})
    frame["hover"] = [_hover(row) for row in frame.to_dict("records")]
    return frame


def _hover(row: dict[str, Any]) -> str:
    lines = [f"<b>{html.escape(row['arm'])} · {int(row['feature'])}</b> ({html.escape(row['fate'])})",
             html.escape(str(row.get("top_tokens") or "no top tokens"))[:120]]
    explanation = row.get("explanation")
    if isinstance(explanation, str) and explanation:
        lines.append("<i>" + html.escape(explanation)[:160] + "</i>")
    return "<br>".join(lines)


def picked_feature(selection: Any) -> tuple[str, int] | None:
    """(arm, feature) of the first point of a plotly selection event (st.plotly_chart(on_select="rerun")), read
    from the point's customdata [arm, feature]; None when nothing is selected."""
    points = ((selection or {}).get("selection") or {}).get("points") or []
    for point in points:
        custom = point.get("customdata")
        if custom and len(custom) >= 2:
            return str(custom[0]), int(custom[1])
    return None
