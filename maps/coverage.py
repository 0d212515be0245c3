"""Station coverage over the road network: heard roads, missed roads, and where to put the next stations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import folium
from branca.element import Figure

from maps import markup
from maps.assets import DEFAULT_BASE
from maps.basemap import add_to_head, base_map, fit_to
from maps.roads import add_roads, road_points
from maps.stations import STATE_COLOURS, STATION_CSS
from maps.words import words

AREA_COLOUR, GAP_COLOUR, SITE_COLOUR = "#2563eb", "#dc2626", "#f59e0b"

COVERAGE_CSS = """
<style>
.bg-site-icon { background: none; border: none; }
.bg-site {
  position: absolute; left: -13px; top: -13px; width: 26px; height: 26px; box-sizing: border-box;
  border-radius: 4px; transform: rotate(45deg); border: 2px solid #fff; background: #f59e0b;
  box-shadow: 0 1px 4px rgba(0,0,0,.45);
}
.bg-site span { display: block; transform: rotate(-45deg); color: #fff;
  font: 700 12px/22px "Bikeguard CJK", system-ui, "DejaVu Sans", sans-serif; text-align: center; }
.bg-coverage-summary {
  position: absolute; z-index: 1000; bottom: 24px; right: 12px; background: rgba(15, 23, 42, .92); color: #e2e8f0;
  padding: 12px 16px; border-radius: 8px; font: 14px/1.5 "Bikeguard CJK", system-ui, "DejaVu Sans", sans-serif;
  box-shadow: 0 2px 10px rgba(0,0,0,.3); max-width: 320px;
}
.bg-coverage-summary b { font-size: 22px; color: #fff; }
.bg-coverage-summary .k { display: inline-block; width: 14px; height: 4px; margin-right: 6px; vertical-align: middle; }
.bg-station-label.deaf { color: #b91c1c; border-color: #fca5a5; }
/* a phone: the summary keeps to a corner and leaves the map visible */
@media (max-width: 500px) {
  .bg-coverage-summary {
    bottom: 18px; right: 6px; max-width: 190px; padding: 7px 10px; font-size: 12px; line-height: 1.4;
  }
  .bg-coverage-summary b { font-size: 17px; }
}
</style>
"""

LatLon = tuple[float, float]


class SuggestedSite(Protocol):
    """A proposed station site and the uncovered road length it would add."""

    @property
    def lat(self) -> float: ...

    @property
    def lon(self) -> float: ...

    @property
    def gain_m(self) -> float: ...


class CoverageLayers(Protocol):
    """What the coverage map draws, computed by its caller (backend.coverage.compute's Coverage is one)."""

    @property
    def road_m(self) -> float: ...

    @property
    def covered_m(self) -> float: ...

    @property
    def share(self) -> float: ...

    @property
    def station_areas(self) -> Sequence[Sequence[LatLon]]: ...

    @property
    def uncovered(self) -> Sequence[Sequence[LatLon]]: ...

    @property
    def suggestions(self) -> Sequence[SuggestedSite]: ...

    @property
    def station_road_m(self) -> Mapping[str, float]: ...


def road_label(station: Mapping[str, Any], road_m: float) -> str:
    """The label beside a station on the coverage map: which station, and how much road it hears."""
    return f"{station['station_id']} · {road_m:.0f} m"


def add_coverage_stations(
    parent: folium.FeatureGroup, stations: Iterable[Mapping[str, Any]], road_m: Mapping[str, float], lang: str = "en"
) -> None:
    """Each station as a dot coloured by its state, labelled with its id and the road it hears (what coverage is
    about: a station that hears no road is in the wrong place), not with passages."""
    add_to_head(parent, "bikeguard_station_css", STATION_CSS)
    w = words(lang)
    for st in stations:
        heard = road_m.get(str(st["station_id"]), 0.0)
        lifecycle = str(st.get("lifecycle") or "")
        tip = (
            f"<b>{markup.text(st['name'])}</b><br>{markup.text(st['station_id'])}"
            + (f" · {markup.text(w.get('lc_' + lifecycle, lifecycle))}" if lifecycle else "")
            + f"<br>{markup.text(w['hears_road'].format(m=f'{heard:.0f}'))}"
        )
        folium.CircleMarker(
            location=(st["lat"], st["lon"]),
            radius=6,
            color="#ffffff",
            weight=2,
            fill=True,
            fill_color=STATE_COLOURS.get(str(st.get("state")), STATE_COLOURS["unknown"]),
            fill_opacity=0.95,
            tooltip=folium.Tooltip(tip, sticky=False, direction="top"),
        ).add_to(parent)
        classes = "bg-station-label" + (" deaf" if heard < 1 else "")
        folium.Marker(
            location=(st["lat"], st["lon"]),
            icon=folium.DivIcon(
                html=f'<div class="{classes}" style="--r: 6px">{markup.text(road_label(st, heard))}</div>',
                icon_size=(0, 0),
                class_name="bg-station-icon",
            ),
            interactive=False,
            keyboard=False,
        ).add_to(parent)


def build_coverage_map(
    coverage: CoverageLayers,
    stations: list[dict[str, Any]],
    roads: dict[str, Any] | None,
    *,
    assets_base: str = DEFAULT_BASE,
    tile_url: str | None = None,
    tile_attribution: str | None = None,
    lang: str = "en",
) -> folium.Map:
    """Station read areas (blue), uncovered road (red), suggested sites (numbered orange diamonds), a summary;
    in `lang`."""
    w = words(lang)
    m = base_map(assets_base=assets_base, tile_url=tile_url, tile_attribution=tile_attribution)
    add_to_head(m, "bikeguard_coverage_css", COVERAGE_CSS)
    areas = folium.FeatureGroup(name=w["layer_read_range"])
    for ring in coverage.station_areas:
        folium.Polygon(ring, color=AREA_COLOUR, weight=1, fill=True, fill_opacity=0.15, interactive=False).add_to(areas)
    areas.add_to(m)
    add_roads(m, roads)
    gaps = folium.FeatureGroup(name=w["layer_uncovered"])
    for line in coverage.uncovered:
        # folium's PolyLine has no annotations.
        folium.PolyLine(
            line,
            color=GAP_COLOUR,
            weight=5,
            opacity=0.85,  # type: ignore[no-untyped-call]
            tooltip=w["not_heard_by_any"],
        ).add_to(gaps)
    gaps.add_to(m)
    station_layer = folium.FeatureGroup(name=w["layer_stations"])
    station_layer.add_to(m)
    add_coverage_stations(station_layer, stations, coverage.station_road_m, lang)
    sites = folium.FeatureGroup(name=w["layer_sites"])
    for i, s in enumerate(coverage.suggestions, start=1):
        folium.Marker(
            location=(s.lat, s.lon),
            icon=folium.DivIcon(
                html=f'<div class="bg-site"><span>{i}</span></div>', icon_size=(0, 0), class_name="bg-site-icon"
            ),
            tooltip=w["site_tip"].format(i=i, m=f"{s.gain_m:.0f}", lat=f"{s.lat:.5f}", lon=f"{s.lon:.5f}"),
        ).add_to(sites)
    sites.add_to(m)
    gain = sum(s.gain_m for s in coverage.suggestions)
    after = (coverage.covered_m + gain) / coverage.road_m if coverage.road_m else 0.0
    figure = m.get_root()
    assert isinstance(figure, Figure)  # a folium map's root is always its Figure
    t = {key: markup.text(text) for key, text in w.items()}
    missed_km = f"{(coverage.road_m - coverage.covered_m) / 1000:.1f}"
    figure.html.add_child(
        folium.Element(
            '<div class="bg-coverage-summary">'
            f"<div>{t['cov_road_covered']}</div><b>{coverage.share:.0%}</b> "
            f"{t['cov_of_km'].format(km=f'{coverage.road_m / 1000:.1f}')}"
            f"<div>{t['cov_not_heard'].format(km=missed_km)}</div>"
            + (
                f"<div>{t['cov_with_sites'].format(n=len(coverage.suggestions))} "
                f"<b style='font-size:16px'>{after:.0%}</b></div>"
                if coverage.suggestions
                else ""
            )
            + f'<div><span class="k" style="background:{GAP_COLOUR}"></span>{t["cov_key_uncovered"]}'
            f'<br><span class="k" style="background:{AREA_COLOUR}"></span>{t["cov_key_range"]}'
            f'<br><span class="k" style="background:{SITE_COLOUR}"></span>{t["cov_key_site"]}'
            f"<br><b style='font-size:inherit'>id · m</b> {t['cov_key_label']}</div></div>"
        )
    )
    fit_to(m, [(s["lat"], s["lon"]) for s in stations] or list(road_points(roads)))
    folium.LayerControl(collapsed=True).add_to(m)
    return m
