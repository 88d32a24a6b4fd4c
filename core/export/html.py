"""One pair's "What changed" as a single HTML file a colleague opens without a server: the sentence, the figures
behind it, and the top features of each fate with their logit-lens tokens and top contexts. Plain HTML tables and
inline SVG bars; no script, no stylesheet or font from elsewhere (nothing outside the file is fetched)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from core.explain.summary import SummaryFacts

BAR_WIDTH = 120  # px of the longest bar in a table


@dataclass(frozen=True)
class Context:
    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    max_index: int  # the token of the context's max activation


@dataclass(frozen=True)
class FeatureCard:
    arm: str
    feature: int
    measure: float | None  # what the section ranks by (its bar)
    logit_lens: str  # top tokens of W_dec @ W_U, one line
    explanation: str = ""
    label: str = ""
    contexts: tuple[Context, ...] = ()


@dataclass(frozen=True)
class FateSection:
    title: str
    caption: str
    measure_name: str
    cards: tuple[FeatureCard, ...]


@dataclass(frozen=True)
class PairReport:
    study: str
    pair: tuple[str, str]
    sentence: str
    facts: SummaryFacts
    fate_counts: tuple[tuple[str, str, int], ...]  # (arm, fate, features)
    sections: tuple[FateSection, ...]
    generated: str  # when, and from which database
    notes: tuple[str, ...] = field(default=())


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ctx{font-family:monospace;white-space:pre-wrap;font-size:.85em}.ctx b{outline:1px solid #c60}
.sentence{font-size:1.1em;background:#f7f7ff;padding:1em;border-left:4px solid #66c}.muted{color:#777}"""


def _num(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None or value != value else format(value, spec)


def bar_svg(value: float | None, largest: float) -> str:
    """An inline SVG bar of `value` against the table's largest magnitude (blue up, red down)."""
    if value is None or value != value or not largest:
        return ""
    width = max(1, round(BAR_WIDTH * abs(value) / largest))
    colour = "#4a7bd0" if value >= 0 else "#d05a4a"
    return (f'<svg width="{BAR_WIDTH}" height="10" role="img"><rect width="{width}" height="10" '
            f'fill="{colour}"/></svg>')


def context_html(context: Context) -> str:
    """Tokens shaded by activation (share of the context's max), the max token outlined."""
    peak = max((a for a in context.acts), default=0.0) or 1.0
    parts = []
    for i, (token, act) in enumerate(zip(context.tokens, context.acts)):
        text = escape(token.replace("\n", "⏎"))
        shade = f'background:rgba(255,140,0,{max(0.0, min(1.0, act / peak)):.2f})' if act > 0 else ""
        cell = f'<span style="{shade}" title="{act:.3g}">{text}</span>' if shade else text
        parts.append(f"<b>{cell}</b>" if i == context.max_index else cell)
    return f'<div class="ctx">{"".join(parts)}</div>'


def _section(section: FateSection) -> str:
    if not section.cards:
        return f"<h2>{escape(section.title)}</h2><p class='muted'>None in this pair.</p>"
    largest = max((abs(c.measure) for c in section.cards if c.measure is not None and c.measure == c.measure),
                  default=0.0)
    rows = "".join(
        f"<tr><td>{escape(c.arm)}#{c.feature}</td><td class='n'>{_num(c.measure)}</td>"
        f"<td>{bar_svg(c.measure, largest)}</td><td>{escape(c.logit_lens)}</td><td>{escape(c.explanation)}</td>"
        f"<td>{escape(c.label)}</td><td>{''.join(context_html(x) for x in c.contexts)}</td></tr>"
        for c in section.cards)
    return (f"<h2>{escape(section.title)}</h2><p>{escape(section.caption)}</p><table><tr><th>feature</th>"
            f"<th>{escape(section.measure_name)}</th><th></th><th>logit lens (top tokens)</th><th>explanation</th>"
            f"<th>label</th><th>top contexts</th></tr>{rows}</table>")


def _table(title: str, headers: list[str], rows: str) -> str:
    """A titled table: `title` plain text (escaped here), `headers` and `rows` already HTML."""
    cells = "".join(f"<th>{h}</th>" for h in headers)
    return f"<h2>{escape(title, quote=False)}</h2><table><tr>{cells}</tr>{rows}</table>"


def _lens(facts: SummaryFacts) -> str:
    if not facts.lens:
        return ""
    rows = "".join(f"<tr><td>{escape(s.site)}</td><td>{escape(', '.join(t for t, _ in s.tokens))}</td>"
                   f"<td class='n'>{s.medical}</td><td class='n'>{s.random_medical:.1f}</td></tr>" for s in facts.lens)
    return _table("The activation difference lens", ["site", f"top tokens through {escape(facts.arm_b)}'s unembedding",
                                                        "medical of top 20", "random directions"], rows)


def _counts(report: PairReport) -> str:
    rows = "".join(f"<tr><td>{escape(arm)}</td><td>{escape(fate)}</td><td class='n'>{n:,}</td></tr>"
                   for arm, fate, n in report.fate_counts)
    control = report.facts.counts
    beyond = "" if control is None else (
        f"<p>Beyond the control pair {escape(report.pair[0])} → {escape(control.control)}: "
        f"{control.emerged_beyond:,} of {control.emerged:,} emerged (control alone: {control.control_emerged:,}), "
        f"{control.disappeared_beyond:,} of {control.disappeared:,} disappeared (control alone: "
        f"{control.control_disappeared:,}).</p>")
    return _table("Fates", ["arm", "fate", "features"], rows) + beyond


def _rows(facts: SummaryFacts) -> str:
    if not facts.rows:
        return ""
    rows = "".join(f"<tr><td class='n'>{r.row}</td><td class='n'>{r.mean_kl:.4g}</td>"
                   f"<td class='ctx'>{escape(r.text)}</td></tr>" for r in facts.rows)
    return _table("Rows where the two models' predictions differ most",
                  ["corpus row", f"mean KL({escape(facts.arm_a)} ‖ {escape(facts.arm_b)})",
                   "around its most divergent token (&lt;&lt;marked&gt;&gt;)"], rows)


def render(report: PairReport) -> str:
    """The whole file."""
    a, b = (escape(x) for x in report.pair)
    notes = "".join(f"<p class='muted'>{escape(n)}</p>" for n in report.notes)
    body = "".join(_section(s) for s in report.sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>What changed: {a} → {b} '
            f"({escape(report.study)})</title><style>{STYLE}</style></head><body>"
            f"<h1>What changed from {a} to {b}</h1><p class='muted'>Study {escape(report.study)}; "
            f"{escape(report.generated)}</p><p class='sentence' id='what-changed'>{escape(report.sentence)}</p>"
            f"{notes}{_lens(report.facts)}{_counts(report)}{body}{_rows(report.facts)}</body></html>\n")
