"""A tag's passages as a numbered line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maps.assets import external_references
from maps.trajectory import build_trajectory_map


def test_trajectory_is_one_line_with_a_numbered_marker_per_passage(
    town: dict[str, Any], alarm_factory: Callable[..., Any]
) -> None:
    points = alarm_factory(town)["trail"]

    html = build_trajectory_map(points, town["roads"]).get_root().render()

    assert external_references(html) == []
    assert html.count("L.polyline(") == 1
    for number in range(1, len(points) + 1):
        assert f"\\u003e{number}\\u003c/div\\u003e" in html  # the DivIcon's HTML, JSON-encoded
    assert points[0]["station_id"] in html


def test_single_passage_has_no_line_but_a_view_around_it() -> None:
    point = {"station_id": "S-1", "lat": 30.27, "lon": 120.15, "seen_at": "2025-01-01T08:00:00Z"}

    html = build_trajectory_map([point]).get_root().render()

    assert "L.polyline(" not in html
    assert "fitBounds" in html
    assert "08:00:00" in html
