"""The station overview map."""

from __future__ import annotations

from typing import Any

from maps.assets import external_references
from maps.stations import build_station_map, station_radius


def test_station_map_shows_every_station_with_its_state_colour(town: dict[str, Any]) -> None:
    html = build_station_map(town["stations"], town["roads"], activity=town["activity"]).get_root().render()

    assert external_references(html) == []
    assert html.count("= L.circleMarker(") == len(town["stations"])
    assert '"fillColor": "#ea580c"' in html  # the offline station
    assert '"fillColor": "#94a3b8"' in html  # the one in an unknown state
    assert "L.geoJson(" in html


def test_busier_stations_are_drawn_larger_up_to_a_cap() -> None:
    assert station_radius(0) < station_radius(10) < station_radius(100) <= station_radius(10_000) == 18.0
