"""Feature: one feature in full. Its URL (?arm=base&feature=123) opens it directly."""

import streamlit as st

from dashboard import data, place, reads, similar, widgets
from dashboard import state_keys as keys

config = data.require_database()
widths = reads.study.widths()
arms = list(widths)
fields = place.feature_fields(keys.FEATURE_ARM, keys.FEATURE_ID, widths, arms[0])
place.restore_or_stop("feature", fields)  # a link to no feature: one line, and no feature 0 in its place

c1, c2, _ = st.columns([1, 1, 3])
arm = c1.selectbox("Arm", arms, key=keys.FEATURE_ARM)
d_sae = widths[arm]
place.clamp(keys.FEATURE_ID, 0, d_sae - 1)  # the other arm's SAE was wider
feature = int(c2.number_input(f"Feature (0 – {d_sae - 1})", 0, d_sae - 1, key=keys.FEATURE_ID))
place.remember("feature", fields)  # a new history entry: Back returns to the previous feature

st.title(f"{arm} · feature {feature}")
links = st.columns([1, 1, 1, 2])
place.page_link(links[0], place.compare_link(arm, feature), "Compare with…", icon=":material/compare_arrows:")
place.page_link(links[1], place.steer_link(arm, feature), "Steer with it", icon=":material/tune:")
place.page_link(links[2], place.FEATURES, "All features", icon=":material/table_rows:")
widgets.feature_panel(arm, feature)
similar.similar_features(arm, feature)
with st.container(border=True):
    st.markdown("**Label this feature**")
    if widgets.label_form(arm, feature):
        st.rerun()  # the header above shows the new label at once
    widgets.undo_button()
