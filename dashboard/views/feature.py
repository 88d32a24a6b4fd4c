"""Feature: one feature in full. Its URL (?arm=base&feature=123) opens it directly."""

import streamlit as st

from dashboard import data, place, similar, widgets
from dashboard import state_keys as keys

config = data.require_database()
widths = data.widths()
arms = list(widths)
fields = place.feature_fields(keys.FEATURE_ARM, keys.FEATURE_ID, widths, arms[0])
place.restore_or_stop("feature", fields)  # a link to no feature: one line, and no feature 0 in its place

c1, c2, _ = st.columns([1, 1, 3])
arm = c1.selectbox("Arm", arms, key=keys.FEATURE_ARM)
d_sae = widths[arm]
if st.session_state[keys.FEATURE_ID] >= d_sae:  # the other arm's SAE was wider
    st.session_state[keys.FEATURE_ID] = d_sae - 1
feature = int(c2.number_input(f"Feature (0 – {d_sae - 1})", 0, d_sae - 1, key=keys.FEATURE_ID))
place.remember("feature", fields)  # a new history entry: Back returns to the previous feature

st.title(f"{arm} · feature {feature}")
links = st.columns([1, 1, 1, 2])
links[0].page_link("views/compare.py", label="Compare with…", icon=":material/compare_arrows:",
                   query_params={"left_arm": arm, "left_feature": str(feature)})
links[1].page_link("views/steer.py", label="Steer with it", icon=":material/tune:",
                   query_params={"arm": arm, "feature": str(feature)})
links[2].page_link("views/features.py", label="All features", icon=":material/table_rows:")
widgets.feature_panel(arm, feature)
similar.similar_features(arm, feature)
with st.container(border=True):
    st.markdown("**Label this feature**")
    if widgets.label_form(arm, feature):
        st.rerun()  # the header above shows the new label at once
    widgets.undo_button()
