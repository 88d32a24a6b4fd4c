"""Map: every feature of both arms at its place in one UMAP layout of their decoder directions. Near points write
near directions; a click opens the feature."""

import streamlit as st

from dashboard import charts, data
from dashboard import state_keys as keys
from dashboard.feature_map import COLOUR_BY, map_points, picked_feature


def explanations():
    """Hook for the explanations (issue 16): a DataFrame arm, feature, explanation once they exist; until then
    None, and the hover shows the top tokens only."""
    return getattr(data, "feature_explanations", lambda: None)()


config = data.require_database()
st.title("Feature map")
points = data.query("feature_map")
if points.empty:
    notes = data.query("decoder_stage_notes")
    st.info(notes.get("map") or "No map in this database: it needs a two-arm study (the map lays out both arms' "
                                "decoders together); run the precompute again (stage map).")
    st.stop()

st.caption(f"{len(points):,} features: one UMAP layout (cosine, fixed seed) of both arms' decoder directions, "
           "which share a residual basis when one model is a fine-tune of the other. Hover for a feature's top "
           "tokens; click a point to open it.")
colour = st.segmented_control("Colour by", list(COLOUR_BY), key=keys.MAP_COLOUR, default="arm") or "arm"
frame = map_points(points, data.current_labels(), explanations())
event = st.plotly_chart(charts.feature_map(frame, COLOUR_BY[colour]), on_select="rerun", selection_mode="points",
                        key=keys.MAP_CHART, width="stretch")
picked = picked_feature(event)
if picked is not None:
    st.switch_page("views/feature.py", query_params={"arm": picked[0], "feature": str(picked[1])})
