"""Label: a queue of features, one at a time, labelled under the sidebar's annotator: the first pass (medical
candidates no one labelled), a second pass (those this annotator has not labelled) or adjudication (features
annotators labelled differently); the agreement between annotators; undo; export."""

import json

import streamlit as st

from core.feature_ids import parse_arm
from dashboard import data, labels_data, labels_widgets, place, reads, widgets
from dashboard import state_keys as keys

QUEUES = {"first": "first pass: no one labelled it", "second": "second pass: I have not labelled it",
          "adjudicate": "adjudication: annotators disagree"}


def parse_queue(text: str, _place: dict) -> str:
    if text not in QUEUES:
        raise ValueError(f"the queue is one of {', '.join(QUEUES)}")
    return text


def pinned(arm: str, queue: str) -> int | None:
    """The feature this session's queue showed last when this run saves a label of it: the queue would otherwise
    have moved on if another annotator labelled it meanwhile, its form would not be drawn, and the save be lost."""
    held = place.kept(keys.LABEL_QUEUE_SHOWN)
    if held and (held["arm"], held["queue"]) == (arm, queue) and \
            labels_widgets.save_pending(arm, held["feature"], adjudicate=queue == "adjudicate"):
        return held["feature"]
    return None


def show(arm: str, queue: str, feature: int, row: dict) -> None:
    """The feature to judge: its numbers, explanation, top tokens and contexts, and the form (adjudicating in the
    adjudication queue)."""
    place.keep(keys.LABEL_QUEUE_SHOWN, {"arm": arm, "queue": queue, "feature": feature})
    with st.container(border=True):
        st.subheader(f"{arm} · feature {feature}")
        st.page_link("views/feature.py", label="Open its page", query_params={"arm": arm, "feature": str(feature)})
        widgets.feature_header(row, arm, feature, team_label=queue != "second")  # a second look is a blind one
        widgets.explanation_block(arm, feature)  # read before the contexts
        tokens = reads.features.feature_tokens(arm, feature)
        st.markdown("**Top tokens:** " + " · ".join(repr(t) for t in tokens[tokens["kind"] == "top"]["token"]))
        widgets.contexts_block(reads.features.feature_contexts(arm, feature, "top"), float(row.get("max_act") or 0),
                               limit=5)
        if labels_widgets.label_form(arm, feature, adjudicate=queue == "adjudicate"):
            st.rerun()


config = data.require_database()
st.title("Label")
name = labels_data.annotator()
if name:
    st.caption(f"Labelling as **{name}** (Annotator, in the sidebar).")
else:
    st.info(labels_widgets.NO_NAME)
team = data.current_labels()  # one label per feature, by the consensus rule (core.agreement)
progress = reads.labels.label_progress(team)
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
                      always=True),
          place.Field(keys.LABEL_QUEUE_MODE, "queue", "first", parse_queue)]
place.restore_or_stop("label", fields)  # the queue's arm and kind survive a visit to a feature's page (in the URL)
left, right = st.columns([1, 3])
arm = left.selectbox("Arm", queue_arms, key=keys.LABEL_QUEUE_ARM)
queue = right.radio("Queue", list(QUEUES), format_func=QUEUES.get, horizontal=True, key=keys.LABEL_QUEUE_MODE)
place.remember("label", fields)
labels_widgets.undo_button()

if queue == "adjudicate":
    split = labels_data.disagreements()
    waiting = split[(split["arm"] == arm) & split["adjudicated"].isna()]
    st.caption(f"{len(waiting)} features of {arm} labelled differently wait for adjudication. The adjudicated label "
               "settles the feature for the team; each annotator's own label stays as it was.")
    held = pinned(arm, queue)
    if held is not None and held in set(split.loc[split["arm"] == arm, "feature"]):
        waiting = split[(split["arm"] == arm) & (split["feature"] == held)]
    if waiting.empty:
        st.success(f"No disagreement on {arm} waits for adjudication.")
    else:
        item = waiting.iloc[0]
        st.markdown(f"**Labels so far:** {item['votes']}")
        show(arm, queue, int(item["feature"]), reads.features.feature_row(arm, int(item["feature"])))
elif queue == "second" and not name:
    st.info("The second pass shows the candidates you have not labelled: name yourself in the sidebar first.")
else:
    done = team if queue == "first" else labels_data.own_labels(name)
    if queue == "second":
        mine = reads.labels.label_progress(done).set_index("arm")
        st.caption(f"You labelled {int(mine.loc[arm, 'labelled']) if arm in mine.index else 0} of the "
                   f"{int(progress.set_index('arm').loc[arm, 'candidates'])} candidates of {arm}; the queue hides "
                   "them, whoever else labelled the rest.")
    held = pinned(arm, queue)
    candidate = (reads.labels.next_unlabelled_candidate(arm, done) if held is None
                 else reads.features.feature_row(arm, held))
    if candidate is None:
        st.success(f"Every medical candidate of {arm} is labelled" + (" by you." if queue == "second" else "."))
    else:
        show(arm, queue, int(candidate["feature"]), candidate)

labels_widgets.agreement_section()
other = data.labels_of_other_saes()
if len(other):
    st.warning(f"{len(other)} labels belong to an SAE that is no longer in this study (another decoder "
               "fingerprint); they are kept, not shown on features.")
history = data.label_history()  # every event, with its annotator and whether it adjudicates
e1, e2, _ = st.columns([1, 1, 4])
e1.download_button("Export CSV", history.to_csv(index=False), f"{config.name}-labels.csv", "text/csv")
e2.download_button("Export JSON", json.dumps(json.loads(history.to_json(orient="records", date_format="iso")),
                                             indent=1), f"{config.name}-labels.json", "application/json")
