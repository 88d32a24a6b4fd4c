"""Label: the queue of medical candidates (by the study's rule) not yet labelled, one at a time; undo; export."""

import json

import streamlit as st

from core.feature_ids import parse_arm
from dashboard import data, place, widgets
from dashboard import state_keys as keys

config = data.require_database()
st.title("Label")
labels = data.current_labels()
progress = data.query("label_progress", labels)
if progress.empty:
    st.info("No feature of this study has 2 or more medical matches: the queue is empty.")
    st.stop()
for col, row in zip(st.columns(len(progress) + 1), progress.itertuples()):
    col.metric(f"{row.arm}: labelled", f"{row.labelled} / {row.candidates} candidates")
    col.progress(row.labelled / row.candidates if row.candidates else 1.0)
if progress["left_out"].sum():
    st.caption("Candidates left out of the queue, with nothing to judge (they never fired, or fired too rarely on "
               "the model diff's tokens to have a fate): " + ", ".join(
                   f"{row.arm} {row.left_out:,}" for row in progress.itertuples() if row.left_out) + ".")

queue_arms = progress["arm"].tolist()
fields = [place.Field(keys.LABEL_QUEUE_ARM, "arm", queue_arms[0], lambda text, _: parse_arm(text, queue_arms),
                      always=True)]
place.restore_or_stop("label", fields)  # the queue's arm survives a visit to a feature's page, and is in the URL
arm = st.selectbox("Arm", queue_arms, key=keys.LABEL_QUEUE_ARM)
place.remember("label", fields)
widgets.undo_button()
candidate = data.query("next_unlabelled_candidate", arm, labels)
if candidate is None:
    st.success(f"Every medical candidate of {arm} is labelled.")
else:
    feature = int(candidate["feature"])
    with st.container(border=True):
        st.subheader(f"{arm} · feature {feature}")
        st.page_link("views/feature.py", label="Open its page", query_params={"arm": arm, "feature": str(feature)})
        widgets.feature_header(candidate, arm, feature)
        widgets.explanation_block(arm, feature)  # read before the contexts
        tokens = data.query("feature_tokens", arm, feature)
        st.markdown("**Top tokens:** " + " · ".join(repr(t) for t in tokens[tokens["kind"] == "top"]["token"]))
        widgets.contexts_block(data.query("feature_contexts", arm, feature, "top"),
                               float(candidate.get("max_act") or 0), limit=5)
        if widgets.label_form(arm, feature):
            st.rerun()

other = data.labels_of_other_saes()
if len(other):
    st.warning(f"{len(other)} labels belong to an SAE that is no longer in this study (another decoder "
               "fingerprint); they are kept, not shown on features.")
history = data.label_history()
e1, e2, _ = st.columns([1, 1, 4])
e1.download_button("Export CSV", history.to_csv(index=False), f"{config.name}-labels.csv", "text/csv")
e2.download_button("Export JSON", json.dumps(json.loads(history.to_json(orient="records", date_format="iso")),
                                             indent=1), f"{config.name}-labels.json", "application/json")
