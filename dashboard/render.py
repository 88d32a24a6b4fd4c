"""HTML for token contexts: each token shaded by its activation (no Streamlit here, so it is testable)."""

from __future__ import annotations

import html
from collections.abc import Sequence

# Orange with an alpha channel: visible on white and on dark backgrounds, the text keeps the theme's colour.
SHADE = "245, 133, 24"


def context_html(tokens: Sequence[str], acts: Sequence[float], scale: float, max_index: int | None = None,
                 label: str = "", shade: str = SHADE, link: tuple[str, str] | None = None,
                 token_hrefs: Sequence[str] | None = None) -> str:
    """One context as inline HTML: token i shaded with alpha acts[i] / scale, the max token underlined,
    whitespace made visible enough to read (newlines as ⏎), each token's activation in its tooltip. shade: the
    "r, g, b" colour (Inspect draws its KL strip in another one). link: (text, href) shown after the tokens.
    token_hrefs: token i is a link to token_hrefs[i] (Inspect: a click picks that token)."""
    parts = []
    for i, (token, act) in enumerate(zip(tokens, acts)):
        alpha = 0.0 if scale <= 0 else min(1.0, max(0.0, float(act) / scale))
        text = html.escape(token.replace("\n", "⏎")).replace(" ", "&nbsp;")
        style = f"background: rgba({shade}, {alpha:.2f}); border-radius: 3px; padding: 1px 0"
        if i == max_index:
            style += "; text-decoration: underline; font-weight: 600"
        span = f'<span title="{float(act):.3f}" style="{style}">{text}</span>'
        if token_hrefs is not None:
            span = (f'<a href="{html.escape(token_hrefs[i])}" target="_self" '
                    f'style="color: inherit; text-decoration: none">{span}</a>')
        parts.append(span)
    prefix = f'<span style="opacity: 0.6; margin-right: 0.8em; white-space: nowrap">{html.escape(label)}</span>' if label else ""
    suffix = "" if link is None else (f' <a href="{html.escape(link[1])}" target="_self" style="margin-left: 0.8em; '
                                      f'font-family: sans-serif; font-size: 0.85em">{html.escape(link[0])}</a>')
    return ('<div style="font-family: monospace; line-height: 1.9; white-space: normal">' + prefix + "".join(parts)
            + suffix + "</div>")
