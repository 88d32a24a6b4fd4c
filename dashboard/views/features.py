"""Features: every feature of one or both arms in one table; filters and sorting run in DuckDB over all rows."""

import dataclasses
import math

import streamlit as st

from core.database.feature_fields import SHOWN
from dashboard import data, filters, place, reads
from dashboard import state_keys as keys

config = data.require_database()
st.title("Features")
arms = reads.study.arm_names()
fields = filters.fields(arms, filters.DEFAULT_SORT_BY_RULE[config.medical_vocabulary.candidates])
# Each arm's fate is the one in the first declared pair it is in (the features view's diff_status).
fate_pairs = {arm: " → ".join(pair) if (pair := reads.pairs.first_pair(arm)) else None for arm in arms}
fate_help = ("The feature's fate in its arm's first declared pair ("
             + "; ".join(f"{arm}: {pair}" for arm, pair in fate_pairs.items() if pair)
             + "): persist (a partner correlates ≥ the match threshold), emerge (b's, none) or disappear (a's, "
               "none); dead and rare (too few firings on the diff's tokens) have no fate")
place.restore_or_stop("features", fields)  # the filters of this session's last visit, or of the link


def reset_filters() -> None:
    """Every filter back to its default; the sort and the page size stay."""
    place.change({field.key: field.default for field in fields
                  if field.key not in (keys.FEATURES_SORT, keys.FEATURES_DESCENDING, keys.FEATURES_PAGE_SIZE)})


with st.container(border=True):
    c1, c2, c3, c4, c11 = st.columns([2, 2, 1, 2, 2])
    c1.multiselect("Arms", arms, key=keys.FEATURES_ARMS)
    c2.slider("Coherence", -1.0, 1.0, step=0.05, key=keys.FEATURES_COHERENCE,
              help="Paper eq. 1 over the top tokens; features with fewer than 2 valid words have none "
                   "and are hidden when the range is narrowed")
    c3.number_input("Min. medical matches", 0, 50, key=keys.FEATURES_MIN_MATCHES)
    c4.text_input("Top or fired tokens include the word", key=keys.FEATURES_WORD, placeholder="e.g. heart",
                  help="A word among its top tokens (the decoder's) or the tokens it fires on most; "
                       "case and spaces ignored")
    c11.text_input("Explanation mentions", key=keys.FEATURES_EXPLANATION, placeholder="e.g. blood vessels",
                   help="Words searched in the features' explanations (`python -m precompute explain`)")
    c11.toggle("By meaning", key=keys.FEATURES_BY_MEANING,
               help="Match explanations by meaning (all-MiniLM-L6-v2 cosine ≥ 0.4, offline) instead of by words")
    c5, c6, c7, c8, c9, c10 = st.columns([1, 1, 1.4, 1.6, 1.8, 1.2])  # the toggles need room for their labels
    c5.number_input("Min. density", 0.0, 1.0, format="%.5f", key=keys.FEATURES_DENSITY_MIN)
    c6.number_input("Max. density", 0.0, 1.0, format="%.5f", key=keys.FEATURES_DENSITY_MAX)
    c7.toggle("With dead", key=keys.FEATURES_DEAD,
              help="Features that never fired on the corpus: hidden unless this is on")
    c7.toggle("Candidates", key=keys.FEATURES_CANDIDATES,
              help="Only the medical candidates, by the study's rule (the candidate column says which rule "
                   "made each: its top tokens, the tokens it fires on, or both)")
    c8.selectbox("Label", filters.LABEL_STATUSES, key=keys.FEATURES_LABEL_STATUS)
    if any(fate_pairs.values()):  # a study without pairs has no fates
        c8.multiselect("Fate", filters.FATES, key=keys.FEATURES_FATES, placeholder="any", help=fate_help)
    sort = c9.selectbox("Sort all matching features by", list(filters.SORTS), key=keys.FEATURES_SORT,
                        help="Sorted in the database over every matching feature, then cut into pages. A click "
                             "on a column header only reorders the rows of this page.")
    descending = c10.toggle("Descending", key=keys.FEATURES_DESCENDING)
    if filters.BOUNDED:  # declared filters without a widget of their own: a Min. and a Max. box each
        for box, (field, end) in zip(st.columns(6), ((f, e) for f in filters.BOUNDED for e in ("min", "max"))):
            box.number_input(f"{end.capitalize()}. {field.label}", value=None, format="%g",
                             key=keys.FEATURES_BOUND.format(field.name, end), help=field.help or None)

values = place.values(fields)
flt = filters.feature_filter(values, arms)
page_size = values[keys.FEATURES_PAGE_SIZE]
labels = data.current_labels()
explained = data.searched_explanations(flt.explanation, values[keys.FEATURES_BY_MEANING])
page = values[keys.FEATURES_PAGE]
column = filters.SORTS[sort]
rows, total = reads.features.features_page(flt, labels, column, descending, page_size, (page - 1) * page_size,
                                           explained)
n_pages = max(1, math.ceil(total / page_size))
if page > n_pages:  # the filter shrank the table under the page the user was on
    page = n_pages
    rows, total = reads.features.features_page(flt, labels, column, descending, page_size,
                                               (page - 1) * page_size, explained)
place.change({keys.FEATURES_PAGE: page})

if total == 0:
    st.warning(filters.why_empty(flt, arms, lambda f: reads.features.features_count(f, labels, explained)))
    st.button("Reset filters", key=keys.FEATURES_RESET, on_click=reset_filters)
else:
    dead = reads.features.features_count(dataclasses.replace(flt, live_only=False), labels, explained) - total \
        if flt.live_only else 0
    st.markdown(f"**{total:,}** features match" + (f" ({dead:,} dead features hidden)." if dead else "."))
arrow = " ↓" if descending else " ↑"
sorted_by = filters.SORTS[sort]
rows = rows.assign(open=[place.feature_url(a, f) for a, f in zip(rows["arm"], rows["feature"])])
help_of = {"candidate_by": data.CANDIDATE_HELP, "diff_status": fate_help}
declared = {f.table_column: filters.column(f, f.label + (arrow if f.name == sorted_by else ""), help_of.get(f.name))
            for f in SHOWN}
st.dataframe(
    rows[["open", "arm", "feature", "top_tokens", "explanation", "simulation", "label",
          *(c for c in declared if c != "top_tokens")]],
    hide_index=True, width="stretch", key="features_table",
    column_config={
        "open": st.column_config.LinkColumn("", display_text="open", width="small"),
        "feature": st.column_config.NumberColumn("feature id" + (arrow if sorted_by == "feature" else "")),
        "explanation": st.column_config.TextColumn("explanation", width="large"),
        "simulation": st.column_config.NumberColumn("sim. r", format="%.2f",
                                                    help="how well the explanation predicts the activations "
                                                         "(Pearson r on held-out contexts)"),
        **declared,
    })
p1, p2, _ = st.columns([1, 1, 4])
p1.number_input(f"Page (of {n_pages})", 1, n_pages, key=keys.FEATURES_PAGE)
p2.selectbox("Rows per page", filters.PAGE_SIZES, key=keys.FEATURES_PAGE_SIZE)
place.remember("features", fields)
