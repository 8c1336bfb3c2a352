"""The inline SVG charts: gaps stay gaps, values land on the axis, labels are escaped."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from service.ui.charts import Marker, Series, accuracy_chart, bar_chart, sparkline

HOURS = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(5)]


def _points(svg: str) -> list[list[tuple[float, float]]]:
    return [
        [tuple(map(float, p.split(","))) for p in points.split()]  # type: ignore[misc]
        for points in re.findall(r'points="([^"]+)"', svg)
    ]


def test_a_sparkline_breaks_where_an_hour_had_no_scores() -> None:
    svg = sparkline([0.5, 1.0, None, 0.0, 0.25], width=42, height=12)
    lines = _points(svg)
    # Two runs; x spreads over 1..41, y maps 1.0 to the top (1) and 0.0 to the bottom (11).
    assert lines == [[(1.0, 6.0), (11.0, 1.0)], [(31.0, 11.0), (41.0, 8.5)]]
    assert "<title>last: 0.250</title>" in svg


def test_a_sparkline_without_scores_is_empty() -> None:
    assert "<polyline" not in sparkline([None, None]) and "<circle" not in sparkline([None])


def test_the_accuracy_chart_draws_both_series_and_the_drifts() -> None:
    train = Series("test-then-train", "train", [0.9, 0.9, 0.2, None, 0.5])
    feedback = Series("late labels", "feedback", [None, 0.8, None, None, None])
    svg = accuracy_chart(HOURS, [train, feedback], [Marker(2, "drift <&> at 02:00")])
    assert svg.count('class="train"') == 2  # a line of three hours and a lone dot
    assert svg.count('<circle class="feedback"') == 1
    assert '<line class="marker"' in svg and "drift &lt;&amp;&gt; at 02:00" in svg
    assert "01 Jan 00:00" in svg and ">1.00<" in svg and ">0.00<" in svg


def test_the_bar_chart_scales_to_its_largest_hour() -> None:
    svg = bar_chart(HOURS, [0, 100, 50, 0, 25], height=126)
    heights = [float(h) for h in re.findall(r'<rect class="bar"[^>]* height="([\d.]+)"', svg)]
    assert heights == [84.0, 42.0, 21.0]  # 126 px less 16 above and 26 below: 84 for 100
    assert ">100<" in svg and "01 Jan 01:00: 100 rows" in svg
