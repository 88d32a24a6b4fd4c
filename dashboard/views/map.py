"""Map: every feature of a declared pair's two arms at its place in one UMAP layout of their decoder directions. Near points write
near directions; a click opens the feature."""

import streamlit as st

from dashboard import charts, data, place, reads
from dashboard import state_keys as keys
from dashboard.feature_map import COLOUR_BY, map_points, picked_feature

config = data.require_database()
st.title("Feature map")
pairs = reads.pairs.pairs()
if not pairs:
    st.info("No map in this database: the map lays out a declared pair's two arms together, and the study "
            "declares no pair (`[[pairs]]`; by default every other arm against the first).")
    st.stop()
fields = [place.pair_field(keys.MAP_PAIR, pairs)]
place.restore_or_stop("map", fields)  # a link to a pair the study does not declare: one line
pair = st.columns([1, 3])[0].selectbox("Pair", pairs, format_func=lambda p: f"{p[0]} → {p[1]}", key=keys.MAP_PAIR,
                                       help="The study's declared pairs (`[[pairs]]`): both arms share one layout.")
place.remember("map", fields)
points = reads.neighbours.feature_map(pair)
if points.empty:
    notes = reads.neighbours.decoder_stage_notes(pair)
    st.info(notes.get("map") or "No map in this database: it needs a two-arm study (the map lays out both arms' "
                                "decoders together); run the precompute again (stage map).")
    st.stop()

st.caption(f"{len(points):,} features: one UMAP layout (cosine, fixed seed) of both arms' decoder directions, "
           "which share a residual basis when one model is a fine-tune of the other. Hover for a feature's top "
           "tokens; click a point to open it.")
colour = st.segmented_control("Colour by", list(COLOUR_BY), key=keys.MAP_COLOUR, default="arm") or "arm"
frame = map_points(points, data.current_labels(), data.current_explanations())
event = st.plotly_chart(charts.feature_map(frame, COLOUR_BY[colour]), on_select="rerun", selection_mode="points",
                        key=keys.MAP_CHART, width="stretch")
picked = picked_feature(event)
if picked is not None:
    place.switch_to(place.feature_link(*picked))
