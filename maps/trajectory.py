"""One tag's passages in order, drawn as a numbered line from the first station to the last."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import folium

from maps import markup
from maps.assets import DEFAULT_BASE
from maps.basemap import add_to_head, base_map, fit_to
from maps.roads import add_roads, road_points
from maps.stations import add_stations

TRAJECTORY_COLOUR = "#2563eb"
FIRST_COLOUR, LAST_COLOUR = "#16a34a", "#dc2626"

TRAJECTORY_CSS = """
<style>
.bg-step-icon { background: none; border: none; }
.bg-step {
  position: absolute; left: -12px; top: -12px; width: 24px; height: 24px; box-sizing: border-box;
  border-radius: 50%; border: 2px solid #fff; background: var(--c, #2563eb); color: #fff;
  font: 700 12px/20px system-ui, "DejaVu Sans", sans-serif; text-align: center;
  box-shadow: 0 1px 4px rgba(0,0,0,.4);
}
</style>
"""


def _step_colour(index: int, count: int) -> str:
    if index == 0:
        return FIRST_COLOUR
    return LAST_COLOUR if index == count - 1 else TRAJECTORY_COLOUR


def build_trajectory_map(
    points: Sequence[Mapping[str, Any]],
    roads: dict[str, Any] | None = None,
    *,
    stations: list[dict[str, Any]] | None = None,
    assets_base: str = DEFAULT_BASE,
    tile_url: str | None = None,
    tile_attribution: str | None = None,
) -> folium.Map:
    """Passages ({station_id, lat, lon, seen_at}, oldest first) as a numbered line; green start, red end."""
    m = base_map(assets_base=assets_base, tile_url=tile_url, tile_attribution=tile_attribution)
    add_to_head(m, "bikeguard_trajectory_css", TRAJECTORY_CSS)
    add_roads(m, roads)
    if stations:
        station_layer = folium.FeatureGroup(name="Stations")
        station_layer.add_to(m)
        add_stations(station_layer, stations)
    layer = folium.FeatureGroup(name="Trajectory")
    layer.add_to(m)
    latlons = [(float(p["lat"]), float(p["lon"])) for p in points]
    if len(latlons) > 1:
        folium.PolyLine(latlons, color=TRAJECTORY_COLOUR, weight=5, opacity=0.85).add_to(layer)
    for i, p in enumerate(points):
        number = i + 1
        at = markup.text(markup.clock(str(p["seen_at"])))
        tip = f"<b>{number}.</b> {markup.text(p['station_id'])} at {at}"
        folium.Marker(
            location=latlons[i],
            icon=folium.DivIcon(
                html=f'<div class="bg-step" style="--c: {_step_colour(i, len(points))}">{number}</div>',
                icon_size=(0, 0),
                class_name="bg-step-icon",
            ),
            tooltip=folium.Tooltip(tip, sticky=False, direction="top"),
        ).add_to(layer)
    fit_to(m, latlons or [(s["lat"], s["lon"]) for s in stations or []] or list(road_points(roads)))
    folium.LayerControl(collapsed=True).add_to(m)
    return m
