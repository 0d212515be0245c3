"""One bike's (or chip's) trajectory on its own map: the numbered route with direction arrows, replayed in time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import folium

from maps.assets import DEFAULT_BASE
from maps.basemap import add_to_head, base_map, fit_to
from maps.replay import Replay
from maps.roads import add_roads, road_points
from maps.stations import add_stations

TITLE = "Bikeguard — trajectory"


def build_trajectory_map(
    summary: Mapping[str, Any],
    roads: dict[str, Any] | None = None,
    *,
    stations: list[dict[str, Any]] | None = None,
    title: str | None = None,
    lang: str = "en",
    assets_base: str = DEFAULT_BASE,
    tile_url: str | None = None,
    tile_attribution: str | None = None,
) -> folium.Map:
    """A trajectory summary (stops and legs, as backend.trajectories.to_summary gives) with the replay player.

    The route (green first stop, red last) is drawn by the same script as the live map's replay.
    """
    m = base_map(assets_base=assets_base, tile_url=tile_url, tile_attribution=tile_attribution)
    add_roads(m, roads)
    if stations:
        station_layer = folium.FeatureGroup(name="Stations")
        station_layer.add_to(m)
        add_stations(station_layer, stations)
    stops = list(summary.get("stops") or [])
    fit_to(
        m,
        [(s["lat"], s["lon"]) for s in stops]
        or [(s["lat"], s["lon"]) for s in stations or []]
        or list(road_points(roads)),
    )
    folium.LayerControl(collapsed=True).add_to(m)
    if title is None:
        who = f"Bike {summary['bike_id']}" if summary.get("bike_id") else None
        title = who or (f"Chip {summary['tag_id']}" if summary.get("tag_id") else "Trajectory")
    add_to_head(m, "bikeguard_trajectory_title", f"<title>{TITLE}</title>")
    m.add_child(Replay(m, summary, title, lang))
    return m
