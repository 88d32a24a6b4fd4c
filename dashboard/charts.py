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


def _compact(fig: go.Figure, height: int = 320) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), legend_title_text="")
    return fig


def token_labels(tokens: pd.DataFrame) -> pd.Series:
    """One distinct label per row: the token's text quoted (whitespace visible), and its id where two rows would
    read alike (a categorical axis draws equal labels as one stacked bar). tokens: token, token_id."""
    label = tokens["token"].map(repr)
    repeated = label.duplicated(keep=False)
    return label.where(~repeated, label + " #" + tokens["token_id"].astype(str))


def logit_bars(tokens: pd.DataFrame, x_range: tuple[float, float] | None = None) -> go.Figure:
    """A feature's top (positive) and bottom (negative) tokens of W_dec @ W_U as horizontal bars, one per token.

    tokens: kind, rank, token_id, token, value. x_range: shared axis for side-by-side comparisons."""
    frame = tokens.assign(label=token_labels(tokens), side=tokens["kind"]).sort_values("value")
    fig = px.bar(frame, x="value", y="label", color="side", orientation="h", hover_data=["token_id"],
                 color_discrete_map={"top": "#F58518", "bottom": "#4C78A8"},
                 labels={"value": "logit weight (W_dec @ W_U)", "label": "", "token_id": "token id"})
    fig.update_yaxes(categoryorder="array", categoryarray=frame["label"].tolist())
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    return _compact(fig, height=max(260, 22 * len(frame)))


def activation_histogram(hist: pd.DataFrame, y_max: float | None = None) -> go.Figure:
    """Histogram over log-spaced bins (low, high, count) drawn as bars on a log x axis."""
    frame = hist[hist["count"] > 0]
    fig = go.Figure(go.Bar(x=(frame["low"] * frame["high"]) ** 0.5, y=frame["count"],
                           width=frame["high"] - frame["low"], marker_color="#F58518"))
    fig.update_xaxes(type="log", title="activation (non-zero)", dtick=1, tickformat="~g")  # one label per decade
    fig.update_yaxes(title="tokens", range=[0, y_max] if y_max else None)
    return _compact(fig, height=260)


def match_histogram(counts: pd.DataFrame) -> go.Figure:
    """Paper Figure 1: features per number of medical matches in their top tokens, both arms side by side."""
    fig = px.bar(counts, x="med_matches", y="features", color="arm", barmode="group", log_y=True,
                 color_discrete_map=ARM_COLORS, labels={"med_matches": "medical matches in the top tokens"})
    fig.update_yaxes(dtick=1, tickformat=",d")  # 1, 10, 100, 1,000: plotly's default labels 2 and 5 of each decade
    fig.update_xaxes(dtick=1)
    return _compact(fig)


def candidate_activations(hist: pd.DataFrame) -> go.Figure:
    """Paper Figure 2: distribution of the medical candidates' non-zero activations, per arm (share of tokens)."""
    frame = hist[hist["count"] > 0].copy()
    frame["share"] = frame["count"] / frame.groupby("arm")["count"].transform("sum")
    frame["activation"] = (frame["low"] * frame["high"]) ** 0.5
    fig = px.line(frame, x="activation", y="share", color="arm", log_x=True, markers=True,
                  color_discrete_map=ARM_COLORS, labels={"share": "share of activations"})
    return _compact(fig)


def coherence_histogram(values: pd.DataFrame) -> go.Figure:
    """Coherence of every scored feature, both arms overlaid (probability density)."""
    fig = px.histogram(values, x="coherence", color="arm", barmode="overlay", histnorm="probability density",
                       nbins=60, opacity=0.6, color_discrete_map=ARM_COLORS)
    return _compact(fig)


STATUS_COLORS = {"persist": "#54A24B", "emerge": "#F58518", "disappear": "#4C78A8"}


def diff_status_bars(counts: pd.DataFrame) -> go.Figure:
    """Persist / emerge / disappear per arm, as shares of the arm's features that have a fate (neither dead nor
    rare on the diff's tokens); the count in the hover."""
    fig = px.bar(counts, x="arm", y="share", color="status", text_auto=".1%", hover_data=["features"],
                 color_discrete_map=STATUS_COLORS, labels={"share": "share of the arm's features"})
    fig.update_yaxes(tickformat=".0%")
    return _compact(fig)


def match_correlation_histogram(frame: pd.DataFrame, threshold: float | None = None) -> go.Figure:
    """Each feature's best-match correlation, both arms overlaid; the persist threshold as a line."""
    fig = px.histogram(frame, x="match_corr", color="arm", barmode="overlay", nbins=50, opacity=0.6,
                       color_discrete_map=ARM_COLORS, labels={"match_corr": "best-match activation correlation"})
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", annotation_text=f"threshold {threshold:g}")
    return _compact(fig)


def same_index_histogram(frame: pd.DataFrame, threshold: float | None = None) -> go.Figure:
    """One arm's features: correlation with the other arm's feature of the same index, coloured by fate."""
    fig = px.histogram(frame, x="same_index_corr", color="status", barmode="stack", nbins=50,
                       color_discrete_map=STATUS_COLORS, category_orders={"status": list(STATUS_COLORS)},
                       labels={"same_index_corr": "activation correlation with the same index in the other arm"})
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", annotation_text=f"threshold {threshold:g}")
    fig.update_yaxes(title="features")
    return _compact(fig)


def similarity_histogram(hist: pd.DataFrame, kind: str) -> go.Figure:
    """Per-token cosine (linear bins) or Euclidean distance (log bins) between the two models' activations."""
    frame = hist[(hist["kind"] == kind) & (hist["count"] > 0)]
    fig = go.Figure(go.Bar(x=(frame["low"] + frame["high"]) / 2 if kind == "cosine" else
                           (frame["low"] * frame["high"]) ** 0.5, y=frame["count"], width=frame["high"] - frame["low"],
                           marker_color="#4C78A8"))
    fig.update_xaxes(title=f"per-token {kind}", type="linear" if kind == "cosine" else "log")
    if kind != "cosine" and len(frame):  # 1-2-5 labels written out: plotly's default "2 3 … 9 100 2" overlap
        ticks = [m * 10.0**e for e in range(-3, 6) for m in (1, 2, 5)
                 if frame["low"].min() <= m * 10.0**e <= frame["high"].max()]
        fig.update_xaxes(tickvals=ticks, ticktext=[f"{t:,g}" for t in ticks])
    fig.update_yaxes(title="tokens")
    return _compact(fig, height=280)


def similarity_by_position(frame: pd.DataFrame) -> go.Figure:
    """Mean cosine of the two models' activations at each context position."""
    fig = px.line(frame, x="position", y="mean_cosine", markers=False,
                  labels={"mean_cosine": "mean cosine", "position": "context position"})
    return _compact(fig, height=280)


def density_scatter(frame: pd.DataFrame, sae_arm: str, other_arm: str) -> go.Figure:
    """Each feature's density on its SAE's own model against on the other model (log-log; 0 not drawn)."""
    shown = frame[(frame["own_density"] > 0) & (frame["other_density"] > 0)]
    fig = px.scatter(shown, x="own_density", y="other_density", log_x=True, log_y=True, opacity=0.4,
                     hover_data=["feature"], labels={"own_density": f"density on {sae_arm}",
                                                     "other_density": f"density on {other_arm}"})
    low = float(min(shown[["own_density", "other_density"]].min())) if len(shown) else 1e-6
    fig.add_shape(type="line", x0=low, y0=low, x1=1, y1=1, line=dict(dash="dot", color="grey"))
    return _compact(fig, height=360)


def dose_response(frame: pd.DataFrame) -> go.Figure:
    """Similarity of the steered output to the feature's top tokens against the coefficient and, on a second
    axis when the frame has it, the output's perplexity under the unsteered model: where fluency breaks."""
    fig = go.Figure(go.Scatter(x=frame["coefficient"], y=frame["similarity"], name="similarity to the top tokens",
                               mode="lines+markers", line=dict(color="#4C78A8")))
    if "perplexity" in frame:
        fig.add_trace(go.Scatter(x=frame["coefficient"], y=frame["perplexity"], name="perplexity (unsteered model)",
                                 mode="lines+markers", line=dict(color="#F58518", dash="dot"), yaxis="y2"))
        fig.update_layout(yaxis2=dict(title="perplexity", overlaying="y", side="right", showgrid=False,
                                      rangemode="tozero"))  # linear from 0: a log axis of 50-400 labelled 2, 4, 7
    fig.update_layout(xaxis_title="coefficient", yaxis_title="similarity to the top tokens",
                      legend=dict(orientation="h", y=1.12))
    fig.add_vline(x=0, line_dash="dot", line_color="grey")
    return _compact(fig)


def log_density_histogram(frame: pd.DataFrame) -> go.Figure:
    """log10 feature density of both arms overlaid (dead features cannot be drawn on a log scale)."""
    fig = px.histogram(frame, x="log10_density", color="arm", barmode="overlay", nbins=50, opacity=0.6,
                       color_discrete_map=ARM_COLORS, labels={"log10_density": "log10 feature density"})
    return _compact(fig)


def token_divergence(frame: pd.DataFrame, chosen: int | None = None) -> go.Figure:
    """Per token: KL(p_base ‖ p_finetuned) of the next-token distributions (nats) and the change in log-probability
    of the token that follows, two lines over the text's tokens. frame: position, token, kl, logprob_change."""
    labels = [f"{p}: {t!r}" for p, t in zip(frame["position"], frame["token"])]
    fig = go.Figure([
        go.Scatter(x=labels, y=frame["kl"], name="KL(base ‖ fine-tuned), nats", mode="lines+markers",
                   line=dict(color="#4C78A8")),
        go.Scatter(x=labels, y=frame["logprob_change"], name="Δ log p(next token), fine-tuned − base",
                   mode="lines+markers", line=dict(color="#F58518", dash="dot")),
    ])
    if chosen is not None and 0 <= chosen < len(labels):
        fig.add_vline(x=chosen, line=dict(color="grey", dash="dash"))
    fig.update_xaxes(type="category", tickangle=-60, categoryorder="array", categoryarray=labels)
    fig.update_layout(legend=dict(orientation="h", y=1.12))
    return _compact(fig, 300)


MAP_CATEGORY_COLORS = {"persist": "#4C78A8", "emerge": "#F58518", "disappear": "#E45756", "rare": "#B279A2",
                       "dead": "#BAB0AC", "no fate": "#D3D3D3", "candidate": "#E45756", "not a candidate": "#BAB0AC",
                       "medical": "#E45756", "not_medical": "#4C78A8", "unsure": "#EECA3B", "unlabelled": "#D3D3D3",
                       **ARM_COLORS}


MAP_WEBGL_ABOVE = 5_000  # points: SVG draws a few thousand well and needs no WebGL; more need WebGL to stay fluid


def feature_map(points: pd.DataFrame, colour: str) -> go.Figure:
    """The feature map: one point per (arm, feature) at (x, y), coloured by the column `colour` (categories, or a
    colour scale for a numeric column: coherence), hover text from `hover`. customdata [arm, feature] lets a click
    name its feature. points: arm, feature, x, y, hover, colour."""
    fig = go.Figure()
    webgl = len(points) > MAP_WEBGL_ABOVE
    scatter, size = (go.Scattergl, 4) if webgl else (go.Scatter, 7)
    numeric = pd.api.types.is_numeric_dtype(points[colour]) and not pd.api.types.is_bool_dtype(points[colour])
    groups = ([("no value", points[points[colour].isna()]), (colour, points[points[colour].notna()])] if numeric
              else list(points.groupby(colour, sort=True)))
    for name, group in groups:
        if group.empty:
            continue
        scaled = numeric and name == colour
        marker = (dict(size=size, color=group[colour], colorscale="Viridis", colorbar=dict(title=colour, thickness=12))
                  if scaled else dict(size=size, color=MAP_CATEGORY_COLORS.get(str(name), None)))
        fig.add_trace(scatter(x=group["x"], y=group["y"], mode="markers", name=str(name), marker=marker,
                                   customdata=group[["arm", "feature"]].to_numpy(dtype=object),
                                   hovertext=group["hover"], hovertemplate="%{hovertext}<extra></extra>"))
    fig.update_layout(height=640, margin=dict(l=10, r=10, t=30, b=10), legend_title_text=colour,
                      xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"), clickmode="event+select",
                      dragmode="pan")
    return fig


def control_histogram(frame: pd.DataFrame, column: str, threshold: float | None = None) -> go.Figure:
    """One side's features, the pair's against the control pair's: `column` (best-match or own-index correlation)
    of each, as shares of its own group (`group`: "pair" / "control"), so groups of different sizes compare."""
    fig = px.histogram(frame, x=column, color="group", barmode="overlay", nbins=50, opacity=0.6,
                       histnorm="percent", color_discrete_map={"pair": "#F58518", "control": "#7F7F7F"},
                       labels={column: "activation correlation", "group": ""})
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", annotation_text=f"threshold {threshold:g}")
    fig.update_yaxes(title="% of the group's features")
    return _compact(fig)
