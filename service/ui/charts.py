"""Charts drawn on the server as inline SVG: a sparkline per context, the accuracy curves and
the rows trained per hour of one context.

Inline SVG needs no script and no library, so the page fetches nothing from anywhere, works
offline and renders the same in every browser. Every number is formatted here and every label
is escaped; the templates insert the result as markup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 40, 12, 16, 26

Scale = Callable[[float], float]
"""Maps a slot (an hour) or a value to a pixel coordinate."""


@dataclass(frozen=True)
class Series:
    """One line of a chart: a value (or None: nothing that hour) per hour."""

    name: str
    css_class: str
    values: Sequence[float | None]


@dataclass(frozen=True)
class Marker:
    """A vertical line at one hour (a drift), with its tooltip."""

    slot: int
    label: str


def sparkline(values: Sequence[float | None], *, width: int = 120, height: int = 24) -> Markup:
    """A small line of accuracies in [0, 1], one per hour; gaps where an hour had no scores."""
    if not any(v is not None for v in values):
        return Markup(f'<svg class="spark" width="{width}" height="{height}"></svg>')
    x = _scale(len(values), 1, width - 1)
    y = _accuracy_scale(1, height - 1)
    parts = _polylines(values, x, y, "spark-line")
    last = max(i for i, v in enumerate(values) if v is not None)
    last_value = values[last]
    assert last_value is not None
    parts.append(f'<circle class="spark-dot" cx="{x(last):.1f}" cy="{y(last_value):.1f}" r="2"/>')
    summary = escape(f"last: {last_value:.3f}")
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img"><title>{summary}</title>{"".join(parts)}</svg>'
    )


def accuracy_chart(
    hours: Sequence[datetime],
    series: Sequence[Series],
    markers: Sequence[Marker] = (),
    *,
    width: int = 960,
    height: int = 240,
) -> Markup:
    """Accuracy curves over `hours` with a 0-1 axis, a time axis and drift markers."""
    x = _scale(len(hours), _PAD_LEFT, width - _PAD_RIGHT)
    y = _accuracy_scale(_PAD_TOP, height - _PAD_BOTTOM)
    parts = [_grid(y, width, (0.0, 0.25, 0.5, 0.75, 1.0), "{:.2f}")]
    parts.append(_time_axis(hours, x, height))
    for marker in markers:
        parts.append(
            f'<line class="marker" x1="{x(marker.slot):.1f}" x2="{x(marker.slot):.1f}" '
            f'y1="{_PAD_TOP}" y2="{height - _PAD_BOTTOM}"><title>{escape(marker.label)}'
            "</title></line>"
        )
    for line in series:
        parts.extend(_polylines(line.values, x, y, line.css_class, name=line.name))
    legend = "".join(
        f'<tspan class="{line.css_class}-text" dx="12">■ {escape(line.name)}</tspan>'
        for line in series
    )
    parts.append(f'<text class="legend" x="{_PAD_LEFT}" y="{_PAD_TOP - 1}">{legend}</text>')
    return _svg("accuracy-chart", width, height, "accuracy per hour", parts)


def bar_chart(
    hours: Sequence[datetime], values: Sequence[int], *, width: int = 960, height: int = 140
) -> Markup:
    """Rows per hour as bars, with the largest value marked on the axis."""
    top = max(values, default=0) or 1
    x = _scale(len(hours) + 1, _PAD_LEFT, width - _PAD_RIGHT)
    bar = max(1.0, x(1) - x(0) - 1)
    floor = height - _PAD_BOTTOM

    def y(value: float) -> float:
        return floor - (floor - _PAD_TOP) * value / top

    parts = [_grid(y, width, (0, top), "{:,.0f}")]
    parts.append(_time_axis(hours, x, height))
    for slot, value in enumerate(values):
        if value:
            parts.append(
                f'<rect class="bar" x="{x(slot):.1f}" y="{y(value):.1f}" width="{bar:.1f}" '
                f'height="{floor - y(value):.1f}"><title>{escape(_hour_label(hours[slot]))}: '
                f"{value:,} rows</title></rect>"
            )
    return _svg("bar-chart", width, height, "rows trained per hour", parts)


def _svg(css_class: str, width: int, height: int, title: str, parts: list[str]) -> Markup:
    return Markup(
        f'<svg class="{css_class}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"><title>{escape(title)}</title>'
        f"{''.join(parts)}</svg>"
    )


def _scale(slots: int, start: float, end: float) -> Scale:
    step = (end - start) / max(slots - 1, 1)
    return lambda slot: start + step * slot


def _accuracy_scale(top: float, bottom: float) -> Scale:
    return lambda value: bottom - (bottom - top) * min(max(value, 0.0), 1.0)


def _polylines(
    values: Sequence[float | None], x: Scale, y: Scale, css_class: str, name: str = ""
) -> list[str]:
    """One polyline per run of hours with values; a lone hour is a dot."""
    runs: list[list[tuple[int, float]]] = [[]]
    for slot, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((slot, value))
    title = f"<title>{escape(name)}</title>" if name else ""
    drawn = []
    for run in runs:
        if len(run) == 1:
            slot, value = run[0]
            drawn.append(
                f'<circle class="{css_class}" cx="{x(slot):.1f}" cy="{y(value):.1f}" r="2.5">'
                f"{title}</circle>"
            )
        elif run:
            points = " ".join(f"{x(slot):.1f},{y(value):.1f}" for slot, value in run)
            drawn.append(f'<polyline class="{css_class}" points="{points}">{title}</polyline>')
    return drawn


def _grid(y: Scale, width: int, ticks: Sequence[float], label: str) -> str:
    lines = []
    for tick in ticks:
        lines.append(
            f'<line class="grid" x1="{_PAD_LEFT}" x2="{width - _PAD_RIGHT}" '
            f'y1="{y(tick):.1f}" y2="{y(tick):.1f}"/>'
            f'<text class="axis" x="{_PAD_LEFT - 4}" y="{y(tick) + 3:.1f}" '
            f'text-anchor="end">{label.format(tick)}</text>'
        )
    return "".join(lines)


def _time_axis(hours: Sequence[datetime], x: Scale, height: int, labels: int = 6) -> str:
    if not hours:
        return ""
    step = max(1, (len(hours) - 1) // (labels - 1)) if len(hours) > 1 else 1
    slots = list(range(0, len(hours), step))
    texts = []
    for slot in slots:
        # The first and the last labels stay inside the chart.
        anchor = "start" if slot == 0 else "end" if slot == slots[-1] else "middle"
        texts.append(
            f'<text class="axis" x="{x(slot):.1f}" y="{height - 8}" text-anchor="{anchor}">'
            f"{escape(_hour_label(hours[slot]))}</text>"
        )
    return "".join(texts)


def _hour_label(hour: datetime) -> str:
    return hour.strftime("%d %b %H:00")
