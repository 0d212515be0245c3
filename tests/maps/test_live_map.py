"""The live map page as HTML: self-contained, every station, the roads, the feed URLs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from maps.assets import external_references
from maps.live import build_live_map

STATION_MARKER = re.compile(r"var circle_marker_\w+ = L\.circleMarker\(")
TOOLTIP_LITERAL = re.compile(r"\.bindTooltip\(\s*`(.*?)`", re.S)


def _page(town: dict[str, Any], alarms: list[dict[str, Any]] | None = None, **kwargs: Any) -> str:
    return build_live_map(town["stations"], town["roads"], town["activity"], alarms or [], **kwargs)


def test_live_map_references_no_external_url(town: dict[str, Any], alarm_factory: Callable[..., Any]) -> None:
    html = _page(town, [alarm_factory(town)])

    assert external_references(html) == []
    assert not re.search(r"https?://", html.replace("http-equiv", ""))


def test_live_map_loads_leaflet_from_the_assets_base(town: dict[str, Any]) -> None:
    html = _page(town, assets_base="/static/vendor/leaflet/")

    assert '<script src="/static/vendor/leaflet/leaflet.js"></script>' in html
    assert 'href="/static/vendor/leaflet/leaflet.css"' in html


def test_live_map_contains_every_station(town: dict[str, Any]) -> None:
    html = _page(town)

    assert len(STATION_MARKER.findall(html)) == len(town["stations"])
    for st in town["stations"]:
        assert st["station_id"] in html
        assert st["name"] in html
        assert f"[{st['lat']}, {st['lon']}]" in html


def test_live_map_draws_the_road_layer(town: dict[str, Any]) -> None:
    html = _page(town)

    assert "L.geoJson(" in html
    assert '"Roads" :' in html
    first_road = town["roads"]["features"][0]["geometry"]["coordinates"]
    assert json.dumps(first_road) in html


def test_live_map_has_header_panel_legend_and_title(town: dict[str, Any]) -> None:
    html = _page(town)

    assert "<title>Bikeguard — live map</title>" in html
    for element_id in ("bg-header", "bg-panel", "bg-alarm-list", "bg-live-status", "bg-legend"):
        assert f'id="{element_id}"' in html


def test_live_map_points_its_script_at_the_given_feed_urls(town: dict[str, Any]) -> None:
    html = _page(town, live_url="/feed/alarms", activity_url="/feed/activity")

    assert '"liveUrl": "/feed/alarms"' in html
    assert '"activityUrl": "/feed/activity"' in html
    assert "new EventSource(cfg.liveUrl)" in html


def test_cleared_alarms_are_left_out(town: dict[str, Any], alarm_factory: Callable[..., Any]) -> None:
    cleared = alarm_factory(town, alarm_id=7) | {"state": "cleared", "plate": "CLEARED-1"}
    active = alarm_factory(town, alarm_id=8)

    html = _page(town, [cleared, active])

    assert "CLEARED-1" not in html
    assert active["plate"] in html


def test_station_names_cannot_break_out_of_the_page(town: dict[str, Any]) -> None:
    town["stations"][0]["name"] = "</script><script>alert(1)</script> `${alert(2)}`"

    html = _page(town)
    tooltips = TOOLTIP_LITERAL.findall(html)

    assert "<script>alert(1)" not in html
    assert len(tooltips) == len(town["stations"])
    assert not any("${" in t or "<script" in t for t in tooltips)
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in tooltips[0]


def test_live_map_without_stations_still_builds(town: dict[str, Any]) -> None:
    html = build_live_map([], town["roads"], [], [])

    assert "L.geoJson(" in html
    assert "fitBounds" in html


def test_tiles_appear_only_when_configured(town: dict[str, Any]) -> None:
    assert "L.tileLayer" not in _page(town)
    assert "/tiles/{z}/{x}/{y}.png" in _page(town, tile_url="/tiles/{z}/{x}/{y}.png", tile_attribution="GIS")


def test_live_map_carries_the_replay_and_where_to_load_trajectories(town: dict[str, Any]) -> None:
    html = _page(town, bikes_url="/police/api/bikes")

    assert '"bikesUrl": "/police/api/bikes"' in html
    assert '"replayWindowsH": [6, 24, 72, 168]' in html
    assert "function bikeguardReplay(map, options)" in html and ".bg-replay-play" in html
    assert html.index("function bikeguardReplay(") < html.index("bikeguardLiveMap(\n")
