"""The coverage map: read areas, uncovered road and suggested sites, with no external references."""

from __future__ import annotations

from pathlib import Path

from backend.coverage import StationSite, compute
from bikeguard.demo import town_roads_geojson
from firmware_sim.town import Town
from maps.assets import external_references
from maps.coverage import build_coverage_map
from tests.browser import screenshot, screenshot_path


def _town_coverage() -> tuple[object, list[dict], dict]:
    town = Town.generate(7, stations=20, bikes=0)
    roads = town_roads_geojson(town)
    stations = [{"station_id": s.station_id, "name": s.name, "lat": s.lat, "lon": s.lon, "state": "online"}
                for s in town.stations]
    cov = compute([StationSite(s["station_id"], s["lat"], s["lon"]) for s in stations], town.roads, suggest=5)
    return cov, stations, roads


def test_coverage_map_shows_gaps_and_suggested_sites_without_external_assets():
    cov, stations, roads = _town_coverage()
    assert 0 < cov.share < 1 and len(cov.suggestions) == 5
    html = build_coverage_map(cov, stations, roads).get_root().render()
    assert external_references(html) == []
    assert "Suggested site 1" in html and "Road covered" in html


def test_coverage_map_renders_in_a_browser(tmp_path: Path, map_server_factory):
    cov, stations, roads = _town_coverage()
    server = map_server_factory(build_coverage_map(cov, stations, roads).get_root().render(), [])
    errors = screenshot(f"{server.url}/", screenshot_path("coverage.png"), wait_for=".bg-site")
    assert errors == []
