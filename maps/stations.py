"""Stations as circle markers coloured by state, sized by recent passages; the station overview map."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, NamedTuple

import folium

from maps import markup
from maps.assets import DEFAULT_BASE
from maps.basemap import add_to_head, base_map, fit_to
from maps.roads import add_roads, road_points
from maps.words import words

STATE_COLOURS: dict[str, str] = {
    "online": "#16a34a",
    "offline": "#ea580c",
    "degraded": "#ca8a04",
    "unknown": "#94a3b8",
}
Period = Literal["10min", "hour"]
"""What the passage counts drawn are for: the live map's last 10 minutes, the installer's last hour."""

# The ring of a mobile reader's marker (a patrol car's or a handheld's), dashed.
MOBILE_RING = "#1d4ed8"

STATION_CSS = """
<style>
.bg-station-icon { background: none; border: none; }
.bg-station-label {
  position: absolute; left: calc(var(--r, 8px) + 3px); top: 0; transform: translateY(-50%);
  padding: 0 5px; border-radius: 8px; white-space: nowrap; pointer-events: none;
  font: 600 12px/17px "Bikeguard CJK", system-ui, "DejaVu Sans", sans-serif; color: #0f172a;
  background: rgba(255, 255, 255, .92); border: 1px solid #cbd5e1; box-shadow: 0 1px 2px rgba(0,0,0,.15);
}
.bg-station-label.idle { color: #64748b; font-weight: 500; }
.bg-station-label.offline { color: #c2410c; border-color: #fdba74; }
</style>
"""


class StationMarker(NamedTuple):
    """The two Leaflet objects drawn for one station: its circle and its passage-count label."""

    circle: folium.CircleMarker
    label: folium.Marker


def station_radius(passages: int) -> float:
    """Circle radius in pixels for a number of recent passages (grows with the square root, capped)."""
    return round(6.0 + min(12.0, 1.6 * math.sqrt(max(0, passages))), 1)


def station_tooltip(station: Mapping[str, Any], passages: int, lang: str = "en", period: Period = "10min") -> str:
    """Tooltip HTML: name, id, state, passages in the period the counts are for (10 minutes or an hour)."""
    w = words(lang)
    state = str(station.get("state", "unknown"))
    count = w[f"one_passage_in_{period}"] if passages == 1 else w[f"passages_in_{period}"].format(n=passages)
    # A mobile reader is drawn where it last was: say so, and since when (its last GPS fix, UTC).
    mobile = ""
    if station.get("mobile"):
        at = station.get("position_at")
        at = datetime.fromisoformat(at) if isinstance(at, str) else at
        fix = f"{at:%Y-%m-%d %H:%M:%S} UTC" if isinstance(at, datetime) else w["mobile_no_fix"]
        mobile = f"<br>{markup.text(w['mobile_reader'].format(t=fix))}"
    return (
        f"<b>{markup.text(station['name'])}</b><br>"
        f"{markup.text(station['station_id'])} · {markup.text(w.get('st_' + state, state))}<br>"
        f"{markup.text(count)}{mobile}"
    )


def label_html(station: Mapping[str, Any], passages: int, lang: str = "en") -> str:
    """The small passage-count label beside a station."""
    state = str(station.get("state", "unknown"))
    classes = "bg-station-label" + (" offline" if state == "offline" else " idle" if passages == 0 else "")
    text = markup.text(words(lang)["st_offline"]) if state == "offline" else str(passages)
    return f'<div class="{classes}" style="--r: {station_radius(passages)}px">{text}</div>'


def passages_by_station(activity: Iterable[Mapping[str, Any]] | None) -> dict[str, int]:
    """Map station_id to its passage count from an activity list."""
    return {str(a["station_id"]): int(a.get("passages", 0)) for a in activity or []}


def add_stations(
    parent: folium.Map | folium.FeatureGroup,
    stations: Iterable[Mapping[str, Any]],
    activity: Iterable[Mapping[str, Any]] | None = None,
    lang: str = "en",
    period: Period = "10min",
) -> dict[str, StationMarker]:
    """Draw every station on `parent`, in `lang`, with its passages of the period; returns its markers by
    station_id so scripts can update them."""
    passages = passages_by_station(activity)
    add_to_head(parent, "bikeguard_station_css", STATION_CSS)
    markers: dict[str, StationMarker] = {}
    for st in stations:
        sid = str(st["station_id"])
        count = passages.get(sid, 0)
        colour = STATE_COLOURS.get(str(st.get("state")), STATE_COLOURS["unknown"])
        circle = folium.CircleMarker(
            location=(st["lat"], st["lon"]),
            radius=station_radius(count),
            # A mobile reader's ring is dark blue and dashed: its place is where it last was, not a fixed pole.
            color=MOBILE_RING if st.get("mobile") else "#ffffff",
            dash_array="4 3" if st.get("mobile") else None,
            weight=3 if st.get("mobile") else 2,
            fill=True,
            fill_color=colour,
            fill_opacity=0.95,
            tooltip=folium.Tooltip(station_tooltip(st, count, lang, period), sticky=False, direction="top"),
        )
        label = folium.Marker(
            location=(st["lat"], st["lon"]),
            icon=folium.DivIcon(html=label_html(st, count, lang), icon_size=(0, 0), class_name="bg-station-icon"),
            interactive=False,
            keyboard=False,
        )
        circle.add_to(parent)
        label.add_to(parent)
        markers[sid] = StationMarker(circle, label)
    return markers


def build_station_map(
    stations: list[dict[str, Any]],
    roads: dict[str, Any] | None,
    *,
    activity: list[dict[str, Any]] | None = None,
    assets_base: str = DEFAULT_BASE,
    tile_url: str | None = None,
    tile_attribution: str | None = None,
    lang: str = "en",
    period: Period = "10min",
) -> folium.Map:
    """Station overview, in `lang`: roads, and every station coloured by state with its passages of the period."""
    m = base_map(assets_base=assets_base, tile_url=tile_url, tile_attribution=tile_attribution)
    add_roads(m, roads)
    group = folium.FeatureGroup(name=words(lang)["layer_stations"])
    group.add_to(m)
    add_stations(group, stations, activity, lang, period)
    fit_to(m, [(s["lat"], s["lon"]) for s in stations] or list(road_points(roads)))
    folium.LayerControl(collapsed=False).add_to(m)
    return m
