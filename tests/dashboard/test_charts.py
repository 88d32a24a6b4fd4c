"""Charts drawn from planted frames: one mark per row, at the row's value."""

import pandas as pd

from dashboard import charts


def bars_by_label(fig) -> dict[str, float]:
    """label -> value of every bar of a horizontal bar chart (over all its traces)."""
    pairs = [(label, value) for trace in fig.data for label, value in zip(trace.y, trace.x)]
    assert len(pairs) == len({label for label, _ in pairs}), "two bars share a label: plotly stacks them"
    return dict(pairs)


def test_logit_bars_draw_one_bar_per_token_id_even_when_tokens_read_alike():
    """Planted: seven byte tokens stored as "\ufffd" (databases before byte tokens got <0x..> labels), between
    two ordinary tokens. Stacked by label they made one bar at their sum (-1.47); each must be its own bar."""
    byte_values = [-0.225, -0.22, -0.215, -0.21, -0.205, -0.2, -0.195]
    tokens = pd.DataFrame({
        "kind": ["top"] * 2 + ["bottom"] * 7,
        "rank": [0, 1] + list(range(7)),
        "token_id": [262, 318] + list(range(188, 195)),
        "token": [" the", " heart"] + ["\ufffd"] * 7,
        "value": [0.9, 0.5] + byte_values,
    })
    bars = bars_by_label(charts.logit_bars(tokens))
    assert len(bars) == 9
    assert bars["' the'"] == 0.9 and bars["' heart'"] == 0.5
    assert sorted(value for label, value in bars.items() if "\ufffd" in label) == sorted(byte_values)
    assert min(bars.values()) == -0.225  # no bar below the most negative token
    assert "'\ufffd' #188" in bars


def test_token_labels_keep_distinct_texts_as_they_are():
    tokens = pd.DataFrame({"token_id": [1, 2, 3], "token": ["<0x8F>", "<0x90>", " heart"]})
    assert charts.token_labels(tokens).tolist() == ["'<0x8F>'", "'<0x90>'", "' heart'"]


def test_figure_1_labels_each_decade_of_its_log_axis_once():
    counts = pd.DataFrame({"arm": ["base"] * 3, "med_matches": [0, 1, 2], "features": [1400, 120, 9]})
    fig = charts.match_histogram(counts)
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1  # 1, 10, 100, 1,000 (not 2, 5, 2, 5)
    assert fig.layout.yaxis.tickformat == ",d" and fig.layout.xaxis.dtick == 1


def test_inspects_divergence_line_has_one_point_per_token_at_its_kl_and_log_prob_change():
    """Inspect's line: a text whose tokens repeat ("the" twice) still gets one x position per token, in text order,
    each at that token's KL and Δ log p (the last token has none: a gap, not a 0); the chosen token is marked."""
    frame = pd.DataFrame({"position": range(4), "token": [" the", " heart", " the", " beat"],
                          "kl": [0.0, 0.25, 1.5, 0.125], "logprob_change": [0.5, -2.0, -0.75, None]})
    fig = charts.token_divergence(frame, chosen=2)
    kl, change = fig.data
    assert list(kl.x) == list(change.x) == ["0: ' the'", "1: ' heart'", "2: ' the'", "3: ' beat'"]
    assert list(kl.y) == [0.0, 0.25, 1.5, 0.125]
    assert list(change.y[:3]) == [0.5, -2.0, -0.75] and pd.isna(change.y[3])
    assert [shape.x0 for shape in fig.layout.shapes] == [2]
    assert list(fig.layout.xaxis.categoryarray) == list(kl.x)
