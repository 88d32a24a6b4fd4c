"""The Streamlit dashboard: app.py lists pages, pages are thin, reads/ holds one typed read per query of the features
database, data.py the study's other files, live.py the live models."""
