"""Features: every feature of one or both arms in one table; filters and sorting run in DuckDB."""

import math

import streamlit as st

from dashboard import data
from dashboard import state_keys as keys

config = data.require_database()
st.title("Features")
arms = data.arm_names()

with st.container(border=True):
    c1, c2, c3, c4 = st.columns([2, 2, 1, 2])
    chosen = c1.multiselect("Arms", arms, default=arms, key=keys.FEATURES_ARMS)
    coherence = c2.slider("Coherence", -1.0, 1.0, (-1.0, 1.0), step=0.05, key=keys.FEATURES_COHERENCE,
                          help="Paper eq. 1 over the top tokens; features with fewer than 2 valid words have none "
                               "and are hidden when the range is narrowed")
    min_matches = c3.number_input("Min. medical matches", 0, 50, 0, key=keys.FEATURES_MIN_MATCHES)
    word = c4.text_input("Top tokens include the word", key=keys.FEATURES_WORD, placeholder="e.g. heart")
    c5, c6, c7, c8, c9 = st.columns([1, 1, 2, 2, 1])
    density_min = c5.number_input("Min. density", 0.0, 1.0, 0.0, format="%.5f", key=keys.FEATURES_DENSITY_MIN)
    density_max = c6.number_input("Max. density", 0.0, 1.0, 1.0, format="%.5f", key=keys.FEATURES_DENSITY_MAX)
    label_status = c7.selectbox("Label", data.LABEL_STATUSES, key=keys.FEATURES_LABEL_STATUS)
    sort = c8.selectbox("Sort by", data.SORTABLE, index=data.SORTABLE.index("coherence"), key=keys.FEATURES_SORT)
    descending = c9.toggle("Descending", True, key=keys.FEATURES_DESCENDING)

full_range = coherence == (-1.0, 1.0)
flt = data.FeatureFilter(
    arms=tuple(chosen), coherence_min=None if full_range else coherence[0],
    coherence_max=None if full_range else coherence[1], min_matches=int(min_matches),
    density_min=density_min or None, density_max=None if density_max >= 1.0 else density_max,
    label_status=label_status, word=word.strip())
page_size = st.session_state.get(keys.FEATURES_PAGE_SIZE, 50)
labels = data.current_labels()
page = st.session_state.get(keys.FEATURES_PAGE, 1)
rows, total = data.query("features_page", flt, labels, sort, descending, page_size, (page - 1) * page_size)
n_pages = max(1, math.ceil(total / page_size))
if page > n_pages:  # the filter shrank the table under the page the user was on
    page = n_pages
    rows, total = data.query("features_page", flt, labels, sort, descending, page_size, (page - 1) * page_size)
st.session_state[keys.FEATURES_PAGE] = page

st.markdown(f"**{total:,}** features match.")
rows = rows.assign(open=[f"/feature?arm={a}&feature={f}" for a, f in zip(rows["arm"], rows["feature"])])
st.dataframe(
    rows[["open", "arm", "feature", "top_tokens", "coherence", "med_matches", "frac_nonzero", "max_act", "label",
          "matched_words", "llr"]],
    hide_index=True, width="stretch", key="features_table",
    column_config={
        "open": st.column_config.LinkColumn("", display_text="open", width="small"),
        "top_tokens": st.column_config.TextColumn("top tokens (W_dec @ W_U)", width="large"),
        "coherence": st.column_config.NumberColumn(format="%.3f"),
        "med_matches": st.column_config.NumberColumn("medical matches"),
        "frac_nonzero": st.column_config.NumberColumn("density", format="%.2e"),
        "max_act": st.column_config.NumberColumn("max act.", format="%.3f"),
        "llr": st.column_config.NumberColumn("LLR medical", format="%.2f",
                                             help="log P(medical token | fires) / P(medical token)"),
    })
p1, p2, _ = st.columns([1, 1, 4])
p1.number_input(f"Page (of {n_pages})", 1, n_pages, key=keys.FEATURES_PAGE)
p2.selectbox("Rows per page", (25, 50, 100, 200), index=1, key=keys.FEATURES_PAGE_SIZE)
