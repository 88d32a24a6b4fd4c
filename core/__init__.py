"""The science of the study: loading, projection, coherence, matching, steering. Never imports streamlit."""
