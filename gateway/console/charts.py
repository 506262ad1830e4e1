"""Server-rendered SVG charts: pure (figures in, markup out).

Why hand-written rather than a charting library: a stacked bar chart is a few dozen lines of
rectangles, and every library that draws one either needs JavaScript in the browser (the
console's CSP allows none) or brings a plotting stack far larger than the console. Colours and
fonts come from `static/console.css` through class names (no inline style: the CSP forbids it);
every text is escaped with markupsafe.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

#: (series attribute, CSS class, legend) in stacking order, bottom first.
LAYERS = (("delivered", "ok", "delivered"), ("bounced", "bounce", "bounced"), ("refused", "refuse", "refused"))


def stacked_bars(title: str, starts: Sequence[datetime], layers: Sequence[tuple[str, Sequence[int]]], *,
                 width: int = 480, height: int = 110, label_format: str = "%H:%M") -> Markup:
    """A stacked bar chart: one bar per bucket (`starts`), one stacked layer per (class, counts)."""
    n = max(1, len(starts))
    top = 14
    bottom = 18
    plot = height - top - bottom
    totals = [sum(counts[i] for _, counts in layers) for i in range(len(starts))]
    peak = max([1, *totals])
    slot = width / n
    bar = max(1.0, slot * 0.8)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<text class="axis" x="0" y="10">max {peak}</text>',
             f'<line class="base" x1="0" y1="{top + plot}" x2="{width}" y2="{top + plot}"/>']
    for i, start in enumerate(starts):
        x = i * slot + (slot - bar) / 2
        y = float(top + plot)
        for css, counts in layers:
            value = counts[i]
            if not value:
                continue
            h = plot * value / peak
            y -= h
            parts.append(f'<rect class="{css}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}">'
                         f"<title>{escape(start.strftime('%Y-%m-%d %H:%M'))} UTC: {value} {escape(css)}</title></rect>")
        if i % max(1, n // 6) == 0:
            parts.append(f'<text class="axis" x="{x:.1f}" y="{height - 4}">'
                         f"{escape(start.strftime(label_format))}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text in it went through escape()


def legend() -> Markup:
    items = "".join(f'<span class="key {css}">{escape(text)}</span>' for _, css, text in LAYERS)
    return Markup(f'<p class="legend">{items}</p>')  # noqa: S704 - constants, escaped
