"""The Feature page's "Similar features": nearest features by decoder cosine in the feature's own SAE and in the
other arm's, and the other arm's features its activations correlate with; each row links to its feature page."""

from __future__ import annotations


import pandas as pd
import streamlit as st

from dashboard import place, reads

CROSS_CAVEAT = ("Decoder cosine across arms assumes both SAEs write into the same residual basis, as a fine-tune of "
                "the base model does; for unrelated models it means nothing.")


def feature_link(arm: str, feature: int) -> str:
    return place.feature_url(arm, feature)


def similar_features(arm: str, feature: int) -> None:
    """Three compact lists side by side (stacked on a narrow screen by Streamlit's columns)."""
    own = reads.neighbours.own_neighbours(arm, feature)
    cross = reads.neighbours.cross_neighbours(arm, feature)
    correlated = reads.neighbours.correlated_features(arm, feature)
    st.markdown("**Similar features**")
    if own.empty and cross.empty and correlated.empty:
        st.caption("None computed for this database: run the precompute again (stages neighbours, "
                   "cross_neighbours).")
        return
    left, middle, right = st.columns(3)
    with left:
        st.caption(f"In {arm}'s SAE, by decoder cosine")
        _table(own.assign(arm=arm), "neighbour", {"cosine": "cosine"}, key=f"own_{arm}_{feature}")
    with middle:
        other = cross.neighbour_arm.iloc[0] if len(cross) else "the other arm"
        st.caption(f"In {other}'s SAE, by decoder cosine", help=CROSS_CAVEAT)
        _table(cross.rename(columns={"neighbour_arm": "arm"}), "neighbour", {"cosine": "cosine", "corr": "act. corr"},
               key=f"cross_{arm}_{feature}")
    with right:
        st.caption("By activation correlation (matching stage: pairs at or above its threshold)")
        _table(correlated.rename(columns={"partner_arm": "arm"}), "partner", {"corr": "act. corr", "cosine": "cosine"},
               key=f"corr_{arm}_{feature}")
    st.caption(CROSS_CAVEAT + " Act. corr is blank below the matching threshold; cosine is blank outside the 10 "
               "nearest.")


def _table(rows: pd.DataFrame, id_column: str, numbers: dict[str, str], key: str) -> None:
    if rows.empty:
        st.caption("—")
        return
    # Numbers as text: the grid prints a missing number as "None", and the caption promises a blank.
    table = pd.DataFrame({"feature": rows[id_column].astype(int),
                          **{label: [_blank_or(x) for x in rows[column]] for column, label in numbers.items()},
                          "open": [feature_link(a, f) for a, f in zip(rows["arm"], rows[id_column])],
                          "top tokens": rows["top_tokens"].fillna("")})  # the link first: a third of a page is narrow
    config = {label: st.column_config.TextColumn(label, width="small", alignment="right") for label in numbers.values()}
    config["open"] = st.column_config.LinkColumn("", display_text="open", width="small")
    config["feature"] = st.column_config.NumberColumn("feature", format="%d", width="small")
    st.dataframe(table, hide_index=True, width="stretch", height=35 * (len(table) + 1) + 3, column_config=config,
                 key=key)


def _blank_or(x) -> str:
    return "" if x is None or pd.isna(x) else f"{x:.3f}"
