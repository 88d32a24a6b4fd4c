"""The Streamlit dashboard: app.py lists pages, pages are thin, data.py owns files and queries."""
