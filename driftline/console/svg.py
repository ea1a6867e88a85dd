"""Charts drawn on the server as SVG (pure functions): no JavaScript, nothing to build.

Every label is escaped: team names and versions come from laptops' telemetry.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape


def _nice_max(value: int) -> int:
    """A round axis maximum at or above `value` (at least 1)."""
    if value <= 5:
        return max(value, 1)
    magnitude: int = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return int(step * magnitude)
    return int(10 * magnitude)


def line_chart(
    points: Sequence[tuple[datetime, int]],
    title: str,
    width: int = 720,
    height: int = 220,
) -> Markup:
    """A step-free line with its area, a y axis from 0, the first and last dates below."""
    left, right, top, bottom = 44, 12, 16, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_max(max((v for _, v in points), default=0))
    count = max(len(points) - 1, 1)

    def xy(i: int, value: int) -> tuple[float, float]:
        return left + plot_w * i / count, top + plot_h * (1 - value / peak)

    coords = [xy(i, v) for i, (_, v) in enumerate(points)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    area = f"{left},{top + plot_h} {line} {left + plot_w},{top + plot_h}" if coords else ""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{round(peak * fraction)}</text>"
        )
    if coords:
        parts.append(f'<polygon points="{area}" class="area"/>')
        parts.append(f'<polyline points="{line}" class="line"/>')
        last_x, last_y = coords[-1]
        parts.append(
            f'<circle cx="{last_x:.1f}" cy="{last_y:.1f}" r="3.5" class="dot"/>'
            f'<text x="{last_x - 6:.1f}" y="{last_y - 8:.1f}" text-anchor="end" '
            f'class="value" data-last="{points[-1][1]}">{points[-1][1]}</text>'
        )
        first, last = points[0][0], points[-1][0]
        parts.append(
            f'<text x="{left}" y="{height - 8}">{first:%b %d}</text>'
            f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{last:%b %d}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- built from escaped labels and numbers


def bar_chart(
    rows: Sequence[tuple[str, int]], title: str, width: int = 360, bar: int = 18
) -> Markup:
    """Horizontal bars, largest first as given, the value at each bar's end."""
    label_w, gap = 130, 6
    height = max(len(rows), 1) * (bar + gap) + gap
    peak = max((v for _, v in rows), default=0) or 1
    plot_w = width - label_w - 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title)}" class="chart bars">',
        f"<title>{escape(title)}</title>",
    ]
    for i, (label, value) in enumerate(rows):
        y = gap + i * (bar + gap)
        w = max(plot_w * value / peak, 1)
        short = label if len(label) <= 18 else label[:17] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar * 0.7:.1f}" text-anchor="end">'
            f"{escape(short)}</text>"
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar}" class="bar"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + bar * 0.7:.1f}">{value}</text>'
        )
    if not rows:
        parts.append(f'<text x="{gap}" y="{bar}">none</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 -- built from escaped labels and numbers
