"""Family: where a model family's features go (Horn & Elliott, seed 004): a base, two fine-tunes of it and their
merge. The flows of Figure 2 (by best match or one-to-one), the SLERP curve of Figure 5, and one feature's lineage
with the proxy test (Appendix D) in every arm it reaches."""

import pandas as pd
import streamlit as st

from core.errors import StudyInputError
from dashboard import data, family_data, place

data.require_database()
st.title("Family")
found = family_data.families()
if not found:
    n_pairs = len(family_data.declared_pairs())
    st.info(f"No model family in this study: it declares {n_pairs} pair{'s' if n_pairs != 1 else ''}, and a family "
            "needs four (`[[pairs]]` base → A, base → B, A → merge, B → merge; "
            "`python -m precompute build-demo --recipe family` builds one).")
    st.stop()

left, right = st.columns([2, 1])
family = left.selectbox("Family", found, key=family_data.FAMILY_PICK,
                        format_func=lambda f: f"{f.base} → {f.a} / {f.b} → {f.merge}")
one_to_one = right.toggle("One-to-one (the assignment)", key=family_data.FAMILY_ONE_TO_ONE,
                          help="Best matches can be many-to-one: one base feature the best match of several. The "
                               "assignment keeps one partner each, with the largest total correlation.")
try:
    counts = family_data.counts(family, one_to_one)
except StudyInputError as err:  # a pair without its matching (not run, or arms that share no tokenizer)
    st.info(str(err))
    st.stop()

cols = st.columns(4)
cols[0].metric(f"{family.base} features persisting into {family.a} or {family.b}", f"{counts.base_into_either:,}",
               help=f"{counts.base_into_a:,} into {family.a}, {counts.base_into_b:,} into {family.b}, "
                    f"{counts.base_into_both:,} into both (the paper: 959)")
cols[1].metric(f"{family.merge} features traceable to {family.a} or {family.b}", f"{counts.merge_traceable:,}",
               help=f"{counts.merge_from_a:,} to {family.a}, {counts.merge_from_b:,} to {family.b} (the paper: 1,210)")
cols[2].metric("of which persisting from the base", f"{counts.merge_persisting_from_base:,}",
               help="a parent they trace to came from the base itself (the paper: 481)")
cols[3].metric("of which emerged during fine-tuning", f"{counts.merge_emerged_in_finetuning:,}",
               help="every parent they trace to emerged in its fine-tune (the paper: 729)")

st.subheader("Where the features go")
flows = family_data.flows_frame(family, one_to_one)
st.plotly_chart(family_data.sankey(flows), key="family_sankey", width="stretch")
st.caption("Only features that persist are drawn (the paper's Figure 2). A link's share is of the features of the "
           "arm it leaves; a merge feature traced to both fine-tunes is counted in a flow from each. "
           f"{'One-to-one: each feature keeps one partner.' if one_to_one else 'By best match.'}")
labels = [f"{s} → {t} ({c:,})" for s, t, c in zip(flows["source"], flows["target"], flows["count"])]
picked = st.selectbox("List a flow's features", range(len(flows)), format_func=lambda i: labels[i],
                      key=family_data.FAMILY_FLOW)
flow = flows.iloc[picked]
listed = pd.DataFrame({"feature": flow["features"]})
listed["open"] = [place.feature_url(flow["arm"], f) for f in listed["feature"]]
st.dataframe(listed, hide_index=True, height=min(36 * (len(listed) + 1), 300),
             column_config={"open": st.column_config.LinkColumn("", display_text="open")})
st.caption(f"Features of {flow['arm']} in this flow.")

st.subheader("Choosing the merge")
curve = family_data.slerp_curve(family)
if curve is None:
    st.caption(f"No SLERP curve beside {family.merge}'s model (`slerp_curve.json`): the family recipe writes one; "
               "a merge made elsewhere has none.")
else:
    st.plotly_chart(family_data.slerp_chart(curve), key="family_slerp", width="stretch")
    chosen = curve.chosen
    st.caption(f"Held-out next-token accuracy on each fine-tune's domain along the SLERP path from {family.a} (t = 0) "
               f"to {family.b} (t = 1); dashed: the base model. Merged at t = {chosen.t:.3f}, where they "
               f"{'are equal' if chosen.crossed else 'come closest (they never cross)'}: {curve.domain_a} "
               f"{chosen.accuracy_a:.3f}, {curve.domain_b} {chosen.accuracy_b:.3f}.")

st.subheader("Explanation scores by fate")
scores = family_data.scores_by_fate(family, one_to_one)
if scores.empty:
    st.caption(f"No explained feature of {family.a} or {family.b} yet: `python -m precompute explain --features "
               "all` (or ids) explains and scores them; the paper's Figure 6 compares those persisting into the merge "
               "with the rest.")
else:
    st.plotly_chart(family_data.fate_histogram(scores), key="family_fates", width="stretch")
    means = scores.groupby(["arm", "fate"])["simulation"].agg(["count", "median"]).reset_index()
    st.dataframe(means, hide_index=True, column_config={"median": st.column_config.NumberColumn(format="%.2f")})

st.subheader("A feature's lineage")
left, middle, right = st.columns([1, 1, 2])
arm = left.selectbox("Arm", family.arms, key=family_data.FAMILY_ARM)
feature = int(middle.number_input("Feature", min_value=0, step=1, key=family_data.FAMILY_FEATURE))
hypothesis = right.text_input("Proxy test: hypothesis tokens (comma-separated, as the tables write them)",
                              key=family_data.FAMILY_HYPOTHESIS, placeholder="=, ' ='",
                              help="Appendix D: log P(tokens | the feature's activations) / P(tokens) in the corpus")
d_sae = counts.d_sae[arm]
if feature >= d_sae:
    st.info(f"{arm} has features 0 to {d_sae - 1}.")
    st.stop()
steps = family_data.lineage_frame(family, arm, feature, one_to_one)
shown = steps.assign(partner=steps["partner"].where(steps["partner"] >= 0))
shown["open"] = [place.feature_url(r.partner_arm, r.partner) if r.partner >= 0 else None
                 for r in steps.itertuples()]
st.dataframe(shown, hide_index=True, column_config={
    "corr": st.column_config.NumberColumn("best correlation", format="%.3f"),
    "open": st.column_config.LinkColumn("", display_text="open")})
st.caption(f"From {arm} #{feature} up to {family.base} and down to {family.merge}; a step without a partner stops "
           "the walk there (its best match, below the threshold, is shown by its correlation).")
tokens = tuple(t.strip().strip("'\"") if t.strip().startswith(("'", '"')) else t.strip()
               for t in hypothesis.split(",") if t.strip())
if tokens:
    proxy = family_data.proxy_along(steps, arm, feature, tokens)
    st.dataframe(proxy, hide_index=True, column_config={
        "llr": st.column_config.NumberColumn("log-likelihood ratio", format="%.2f"),
        "lower_bound": st.column_config.CheckboxColumn("at least", help="a hypothesis token is not among the "
                                                                         "feature's stored top fired tokens")})
