"""The overview's charts, drawn as inline SVG on the server: no script, no CDN, no build.

Colours come from the stylesheet through classes (``bar-completed``, ...), so
dark mode applies to them too; every bar has a ``<title>`` (its tooltip) and
the chart an ``aria-label`` saying what it shows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

_WIDTH, _HEIGHT, _PAD = 720, 160, 24


def throughput(minutes: Sequence[dt.datetime], ended: Mapping[str, Sequence[int]]) -> Markup:
    """Jobs completed (and failed, stacked on top) in each minute, oldest on the left."""
    completed = ended.get("completed", [0] * len(minutes))
    failed = ended.get("failed", [0] * len(minutes))
    top = max([c + f for c, f in zip(completed, failed, strict=True)] + [1])
    width = (_WIDTH - 2 * _PAD) / max(len(minutes), 1)
    usable = _HEIGHT - 2 * _PAD
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-label="Jobs ended per minute over the last {len(minutes)} minutes">',
        f'<line class="axis" x1="{_PAD}" y1="{_HEIGHT - _PAD}" x2="{_WIDTH - _PAD}" '
        f'y2="{_HEIGHT - _PAD}"/>',
        f'<text class="label" x="{_PAD}" y="{_PAD - 8}">{top}/min</text>',
    ]
    for i, minute in enumerate(minutes):
        x = _PAD + i * width
        base = float(_HEIGHT - _PAD)
        for kind, count in (("completed", completed[i]), ("failed", failed[i])):
            if not count:
                continue
            height = usable * count / top
            base -= height
            tip = f"{minute:%H:%M} UTC: {count} {kind}"
            parts.append(
                f'<rect class="bar-{kind}" x="{x + 1:.1f}" y="{base:.1f}" '
                f'width="{max(width - 2, 1):.1f}" height="{height:.1f}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    if minutes:
        for index in (0, len(minutes) - 1):
            anchor = "start" if index == 0 else "end"
            x = _PAD if index == 0 else _WIDTH - _PAD
            parts.append(
                f'<text class="label" x="{x}" y="{_HEIGHT - 6}" text-anchor="{anchor}">'
                f"{minutes[index]:%H:%M}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # every text in it is escaped or a number


def backlog(counts: Mapping[str, Mapping[str, int]]) -> Markup:
    """Open jobs per type: pending, blocked and running, as stacked horizontal bars."""
    kinds = ("pending", "blocked", "running")
    rows = [(name, [by.get(k, 0) for k in kinds]) for name, by in sorted(counts.items())]
    rows = [row for row in rows if sum(row[1])]
    if not rows:
        return Markup('<p class="muted">No open jobs.</p>')
    top = max(sum(values) for _, values in rows)
    line, label = 22, 180
    height = line * len(rows) + 8
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {height}" role="img" '
        'aria-label="Open jobs per type: pending, blocked and running">'
    ]
    for i, (name, values) in enumerate(rows):
        y = 4 + i * line
        parts.append(
            f'<text class="label" x="{label - 8}" y="{y + 14}" text-anchor="end">'
            f"{escape(name[:28])}</text>"
        )
        x = float(label)
        for kind, count in zip(kinds, values, strict=True):
            if not count:
                continue
            width = (_WIDTH - label - 60) * count / top
            parts.append(
                f'<rect class="bar-{kind}" x="{x:.1f}" y="{y}" width="{max(width, 1):.1f}" '
                f'height="{line - 6}"><title>{escape(name)}: {count} {kind}</title></rect>'
            )
            x += width
        parts.append(f'<text class="label" x="{x + 6:.1f}" y="{y + 14}">{sum(values)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # every text in it is escaped or a number
