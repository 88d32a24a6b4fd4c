"""Charts: functions DataFrame -> plotly figure, no Streamlit inside."""

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

ARM_COLORS = {"base": "#4C78A8", "finetuned": "#F58518"}


def perplexity_bars(frame: pd.DataFrame) -> go.Figure:
    """Held-out perplexity per arm, grouped by text domain (lower is better)."""
    fig = px.bar(frame, x="text", y="perplexity", color="arm", barmode="group", text_auto=".0f",
                 color_discrete_map=ARM_COLORS, labels={"text": "held-out text"})
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), legend_title_text="")
    return fig
