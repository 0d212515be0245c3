"""The road network drawn as grey vector lines, so a map is readable without any tile server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import folium

ROAD_COLOUR = "#8a96a3"
ROAD_WEIGHT_PX = 3


def add_roads(
    parent: folium.Map | folium.FeatureGroup, roads: dict[str, Any] | None, name: str = "Roads"
) -> folium.FeatureGroup | None:
    """Add a GeoJSON FeatureCollection of LineStrings as a 'Roads' layer; None when there are no roads."""
    if not roads or not roads.get("features"):
        return None
    layer = folium.FeatureGroup(name=name, control=True)
    folium.GeoJson(
        roads,
        name=name,
        style_function=lambda _feature: {
            "color": ROAD_COLOUR,
            "weight": ROAD_WEIGHT_PX,
            "opacity": 0.9,
            "lineCap": "round",
            "lineJoin": "round",
        },
        interactive=False,
        control=False,
    ).add_to(layer)
    layer.add_to(parent)
    return layer


def road_points(roads: dict[str, Any] | None) -> Iterator[tuple[float, float]]:
    """Every vertex of the roads as (lat, lon), for fitting a view when there is nothing else."""
    for feature in (roads or {}).get("features", []):
        geometry = feature.get("geometry") or {}
        coords = geometry.get("coordinates") or []
        lines = coords if geometry.get("type") == "MultiLineString" else [coords]
        for line in lines:
            for lon, lat, *_ in line:
                yield (lat, lon)
