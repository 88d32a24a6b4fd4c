"""Entry point: `streamlit run dashboard/app.py -- --config configs/demo.toml`. Lists the pages, nothing else."""

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # streamlit runs this file as a script, not as part of the package
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="SAE fine-tune diff", page_icon="🔬", layout="wide")
PAGES = ROOT / "dashboard" / "views"  # not "pages/": Streamlit would also list that folder as legacy pages
from dashboard.study import study_has_pair  # noqa: E402  (after the path above)

# A study with a pair opens on the question people open it with (issue 22); one arm alone, on the Overview.
changed_first = study_has_pair()
pages = [
    st.Page(str(PAGES / "changed.py"), title="What changed", icon=":material/lightbulb:", url_path="changed",
            default=changed_first),
    st.Page(str(PAGES / "overview.py"), title="Overview", icon=":material/dashboard:", default=not changed_first,
            url_path="overview"),
    st.Page(str(PAGES / "features.py"), title="Features", icon=":material/table_rows:", url_path="features"),
    st.Page(str(PAGES / "feature.py"), title="Feature", icon=":material/search:", url_path="feature"),
    st.Page(str(PAGES / "compare.py"), title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(str(PAGES / "label.py"), title="Label", icon=":material/label:", url_path="label"),
    st.Page(str(PAGES / "inspect.py"), title="Inspect", icon=":material/manage_search:", url_path="inspect"),
    st.Page(str(PAGES / "steer.py"), title="Steer", icon=":material/tune:", url_path="steer"),
    st.Page(str(PAGES / "diff.py"), title="Model diff", icon=":material/difference:", url_path="diff"),
    st.Page(str(PAGES / "map.py"), title="Map", icon=":material/scatter_plot:", url_path="map"),
    st.Page(str(PAGES / "family.py"), title="Family", icon=":material/family_history:", url_path="family"),
]
from dashboard.labels_widgets import annotator_sidebar  # noqa: E402

annotator_sidebar()  # who is labelling, on every page (kept in the URL)
st.navigation(pages).run()
