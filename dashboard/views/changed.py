"""What changed: one screen that answers "what did fine-tuning teach this model?" for a declared pair, each finding
beside its control and linked to its evidence (issue 22). The sentence at the top is built from the measurements
shown below it, no LLM."""

import streamlit as st

from core.change_summary import what_changed
from dashboard import changed, data, place, reads, study
from dashboard.control import NO_CONTROL
from dashboard import state_keys as keys
from dashboard.divergence import divergence_section
from dashboard import pair_summary

config = data.require_database()
st.title("What changed")
roles = reads.pairs.pair_controls()
pairs = [pair for pair in reads.pairs.pairs() if not roles.get(pair, {}).get("controls")]
if not pairs:
    st.info(f"This study compares no pair of arms, so there is no change to report: add a second arm and a `[[pairs]]` "
            f"table, then run `python -m precompute run --config {study.config_path()}`.")
    st.stop()
fields = [place.pair_field(keys.CHANGED_PAIR, pairs)]
place.restore_or_stop("changed", fields)
pair = st.columns([1, 3])[0].selectbox("Pair", pairs, format_func=lambda p: reads.pairs.pair_label(p, roles),
                                       key=keys.CHANGED_PAIR)
place.remember("changed", fields)
arm_a, arm_b = pair
control = roles.get(pair, {}).get("control")
summary = st.container()  # filled last: the sentence reads what the sections below measured

lens = changed.lens_section(pair)
change = changed.change_section(pair, control)
facts, emerged = changed.control_facts(pair, control, config.diff.fdr)
changed.emerged_section(pair, facts, emerged)
changed.moved_section(pair)
divergence_section(arm_a, arm_b, reads.study.token_set_text(reads.pairs.pair_token_sets(pair).get("divergence")),
                   reads.pairs.pair_metrics(pair).divergence)
pair_summary.summary_section(pair, control, config.diff.fdr)

with summary:
    st.markdown(what_changed(arm_a, arm_b, lens, change, facts))
    if control is None:
        st.caption(NO_CONTROL.format(a=arm_a, b=arm_b))
