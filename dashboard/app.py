"""Entry point: `streamlit run dashboard/app.py -- --config configs/demo.toml`. Lists the pages, nothing else."""

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # streamlit runs this file as a script, not as part of the package
    sys.path.insert(0, str(ROOT))

st.set_page_config(page_title="SAE fine-tune diff", page_icon="🔬", layout="wide")
pages = [st.Page(str(ROOT / "dashboard" / "pages" / "overview.py"), title="Overview", icon="📊", default=True)]
st.navigation(pages).run()
