"""The coverage map: read areas, uncovered road and suggested sites, with no external references."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.coverage import StationSite, compute
from bikeguard.demo import town_roads_geojson
from firmware_sim.town import Town
from maps.assets import external_references
from maps.coverage import build_coverage_map
from maps.stations import build_station_map
from tests.browser import screenshot, screenshot_path


def _town_coverage() -> tuple[object, list[dict], dict]:
    town = Town.generate(7, stations=20, bikes=0)
    roads = town_roads_geojson(town)
    stations = [
        {"station_id": s.station_id, "name": s.name, "lat": s.lat, "lon": s.lon, "state": "online"}
        for s in town.stations
    ]
    cov = compute([StationSite(s["station_id"], s["lat"], s["lon"]) for s in stations], town.roads, suggest=5)
    return cov, stations, roads


def test_coverage_map_shows_gaps_and_suggested_sites_without_external_assets():
    cov, stations, roads = _town_coverage()
    assert 0 < cov.share < 1 and len(cov.suggestions) == 5
    html = build_coverage_map(cov, stations, roads).get_root().render()
    assert external_references(html) == []
    assert "Suggested site 1" in html and "Road covered" in html
    # Each station labelled with the road it hears (an intersection's station hears a few hundred metres).
    assert all(150 < cov.station_road_m[s["station_id"]] < 500 for s in stations)
    first = stations[0]["station_id"]
    assert f"{first} \\u00b7 {cov.station_road_m[first]:.0f} m" in html  # the label, as folium writes it in JSON


def test_coverage_map_renders_in_a_browser(tmp_path: Path, map_server_factory):
    cov, stations, roads = _town_coverage()
    server = map_server_factory(build_coverage_map(cov, stations, roads).get_root().render(), [])
    errors = screenshot(f"{server.url}/", screenshot_path("coverage.png"), wait_for=".bg-site")
    assert errors == []


@dataclass(frozen=True)
class PlainSite:
    lat: float
    lon: float
    gain_m: float


@dataclass(frozen=True)
class PlainCoverage:
    road_m: float
    covered_m: float
    share: float
    station_areas: list[list[tuple[float, float]]] = field(default_factory=list)
    uncovered: list[list[tuple[float, float]]] = field(default_factory=list)
    suggestions: list[PlainSite] = field(default_factory=list)
    station_road_m: dict[str, float] = field(default_factory=dict)


def test_coverage_map_draws_plain_data_computed_elsewhere():
    square = [(30.270, 120.150), (30.270, 120.151), (30.271, 120.151), (30.271, 120.150), (30.270, 120.150)]
    layers = PlainCoverage(
        road_m=2000.0,
        covered_m=500.0,
        share=0.25,
        station_areas=[square],
        uncovered=[[(30.272, 120.150), (30.274, 120.150)]],
        suggestions=[PlainSite(30.273, 120.150, 300.0)],
        station_road_m={"st-001": 0.0},
    )
    station = {"station_id": "st-001", "name": "Gate", "lat": 30.2705, "lon": 120.1505, "state": "online"}
    html = build_coverage_map(layers, [station], None).get_root().render()
    assert "<b>25%</b> of 2.0 km" in html and "1.5 km not heard by any station" in html
    assert "Suggested site 1: covers 300 m more road (30.27300, 120.15000)" in html
    assert "With the 1 suggested sites: <b style='font-size:16px'>40%</b>" in html
    assert "Not heard by any station" in html and external_references(html) == []
    assert "st-001 \\u00b7 0 m" in html and 'bg-station-label deaf\\"' in html  # hears no road: in the wrong place


def test_coverage_and_station_maps_speak_chinese():
    cov, stations, roads = _town_coverage()
    coverage_html = build_coverage_map(cov, stations, roads, lang="zh").get_root().render()  # type: ignore[arg-type]
    assert "道路覆盖率" in coverage_html and "建议站址 1" in coverage_html and "Road covered" not in coverage_html
    station_html = (
        build_station_map([s | {"state": "offline"} for s in stations], roads, lang="zh", period="hour")
        .get_root()
        .render()
    )
    assert "近一小时经过" in station_html  # tooltips: the installer's counts are for the last hour
    # Labels (JSON in the page): 离线, never the English word.
    assert "\\u003e\\u79bb\\u7ebf\\u003c" in station_html and "\\u003eoffline\\u003c" not in station_html
