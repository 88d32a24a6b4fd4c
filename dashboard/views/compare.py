"""Compare: two features side by side (one per arm, or any two) on shared axes, with their shared top tokens."""

import streamlit as st

from dashboard import data, place, reads, widgets
from dashboard import state_keys as keys

config = data.require_database()
widths = reads.study.widths()
arms = list(widths)
fields = (place.feature_fields(keys.COMPARE_LEFT_ARM, keys.COMPARE_LEFT_FEATURE, widths, arms[0],
                               "left_arm", "left_feature")
          + place.feature_fields(keys.COMPARE_RIGHT_ARM, keys.COMPARE_RIGHT_FEATURE, widths, arms[-1],
                                 "right_arm", "right_feature"))
place.restore_or_stop("compare", fields)  # a link to no feature: one line, not feature 0 side by side

st.title("Compare")
sides = st.columns(2)
chosen = []
for side, (arm_key, feature_key) in zip(sides, ((keys.COMPARE_LEFT_ARM, keys.COMPARE_LEFT_FEATURE),
                                               (keys.COMPARE_RIGHT_ARM, keys.COMPARE_RIGHT_FEATURE))):
    c1, c2 = side.columns(2)
    arm = c1.selectbox("Arm", arms, key=arm_key)
    place.clamp(feature_key, 0, widths[arm] - 1)  # the other arm's SAE was wider
    feature = int(c2.number_input("Feature", 0, widths[arm] - 1, key=feature_key))
    chosen.append((arm, feature))
place.remember("compare", fields)

tokens = [reads.features.feature_tokens(arm, feature) for arm, feature in chosen]
values = [v for t in tokens for v in t["value"]] or [0.0]
x_range = (min(min(values), 0) * 1.1, max(max(values), 0) * 1.1)
y_max = max([reads.features.feature_histogram(a, f)["count"].max() or 0 for a, f in chosen] + [1]) * 1.05

overlap = reads.features.top_token_overlap(chosen[0], chosen[1])
st.markdown(f"**Shared top tokens: {len(overlap)}** " + (", ".join(repr(t) for t in overlap["token"]) or "none"))
for side, (arm, feature), n in zip(st.columns(2), chosen, ("l", "r")):
    with side:
        st.subheader(f"{arm} · feature {feature}")
        place.page_link(st, place.feature_link(arm, feature), "Open its page")
        widgets.feature_panel(arm, feature, x_range, y_max, key=n, narrow=True)
