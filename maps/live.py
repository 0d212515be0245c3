"""The live map page police watch: stations, roads, active alarms with their trails, fed by SSE."""

from __future__ import annotations

from typing import Any

import folium
from branca.element import MacroElement
from folium.template import Template

from maps import markup, replay
from maps.assets import DEFAULT_BASE
from maps.basemap import base_map, fit_to
from maps.roads import ROAD_COLOUR, add_roads, road_points
from maps.stations import STATE_COLOURS, STATE_LABELS, StationMarker, add_stations

TITLE = "Bikeguard — live map"
ACTIVITY_INTERVAL_S = 10
REPLAY_WINDOWS_H = (6, 24, 72, 168)
"""Time windows the replay offers (hours back from now); the second is the default."""
FEW_MOVES = 20
"""Under this many moves seen from a station, its "likely next station" is marked as resting on few."""
SEVERITY_COLOURS: dict[str, str] = {"critical": "#dc2626", "warning": "#f59e0b", "info": "#3b82f6"}
KIND_LABELS: dict[str, str] = {
    "stolen_chip_seen": "Stolen chip seen",
    "armed_bike_moving": "Armed bike moving",
    "tamper": "Tamper",
    "low_battery": "Low battery",
    "chip_cloned": "Chip cloned",
    "station_offline": "Station offline",
    "station_degraded": "Station degraded",
}


class LiveFeed(MacroElement):
    """Page chrome (header, alarm panel, legend) and the script that keeps the map live and replays trajectories."""

    _template = Template(
        """
        {% macro header(this, kwargs) %}
            <title>{{ this.title }}</title>
            <style>{{ this.css }}</style>
            <style>
                /* Beats folium's #map rule (the whole window): the map fills what header and panel leave. */
                body #{{ this.map_name }} {
                    position: absolute; top: var(--bg-header-h); left: 0; right: var(--bg-panel-w); bottom: 0;
                    width: auto; height: auto;
                }
            </style>
        {% endmacro %}
        {% macro html(this, kwargs) %}{{ this.chrome }}{% endmacro %}
        {% macro script(this, kwargs) %}
            {{ this.code }}
            var bikeguard_live = bikeguardLiveMap(
                {{ this.config }}, {{ this.map_name }}, {{ this.station_refs }}, {{ this.alarm_layer }}
            );
        {% endmacro %}
        """
    )

    def __init__(
        self,
        m: folium.Map,
        stations: dict[str, StationMarker],
        alarm_layer: folium.FeatureGroup,
        config: dict[str, Any],
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # branca's MacroElement is untyped
        self._name = "LiveFeed"
        self.title = markup.text(TITLE)
        self.css = replay.style() + replay.source("live.css")
        self.code = replay.script() + replay.source("live.js")
        self.chrome = _chrome()
        self.config = markup.script_json(config)
        self.map_name = m.get_name()
        self.alarm_layer = alarm_layer.get_name()
        self.station_refs = (
            "{"
            + ", ".join(
                f"{markup.script_json(sid)}: [{sm.circle.get_name()}, {sm.label.get_name()}]"
                for sid, sm in stations.items()
            )
            + "}"
        )


def _legend() -> str:
    states = "".join(
        f'<li><span class="bg-key-dot" style="background:{colour}"></span>Station {STATE_LABELS[state]}</li>'
        for state, colour in STATE_COLOURS.items()
    )
    return (
        '<section id="bg-legend"><h3>Legend</h3><ul>'
        f"{states}"
        '<li><span class="bg-key-count">12</span>Passages, last 10 min</li>'
        '<li><span class="bg-key-alarm"></span>Alarm (latest station)</li>'
        '<li><span class="bg-key-line" style="background:repeating-linear-gradient(90deg,#dc2626 0 8px,'
        'transparent 8px 12px)"></span>Alarm trail</li>'
        '<li><span class="bg-key-next"></span>Likely next station (chance, arrival)</li>'
        '<li><span class="bg-key-step">1</span>Replay: stops in order</li>'
        f'<li><span class="bg-key-line" style="background:{ROAD_COLOUR}"></span>Road</li>'
        "</ul></section>"
    )


def _chrome() -> str:
    return (
        '<header id="bg-header">'
        f'<div class="bg-brand"><span class="bg-logo"></span><h1>{markup.text(TITLE)}</h1></div>'
        '<div class="bg-stats">'
        '<div class="bg-stat alarm" id="bg-alarm-stat">'
        '<b id="bg-alarm-count">0</b><span>active alarms</span></div>'
        '<div class="bg-stat"><b id="bg-online-count">–</b><span>stations online</span></div>'
        '<div class="bg-stat"><b id="bg-passage-count">–</b><span>passages, last 10 min</span></div>'
        "</div>"
        '<div class="bg-status">'
        '<div id="bg-live-status" class="connecting"><i></i><span>Live feed: connecting…</span></div>'
        '<div id="bg-activity-status">Station activity: waiting for first update</div>'
        "</div>"
        '<div id="bg-clock"></div>'
        "</header>"
        '<aside id="bg-panel">'
        '<form id="bg-search" autocomplete="off">'
        '<input id="bg-search-q" name="q" maxlength="40" required placeholder="Plate, frame number or chip id">'
        '<input id="bg-search-case" name="case_number" maxlength="40" placeholder="Case no. (owner, replay)"'
        ' title="A case number unlocks the details of the owner and the replay of a bike not reported stolen;'
        ' both are recorded in the audit log">'
        '<button type="submit">Find</button>'
        '<div id="bg-search-result" role="status"></div>'
        "</form>"
        '<div id="bg-action-status" role="status"></div>'
        '<h2>Active alarms <span id="bg-panel-count">0</span><small id="bg-panel-acked"></small></h2>'
        '<p id="bg-no-alarms">No active alarms</p>'
        '<ol id="bg-alarm-list"></ol>'
        f"{_legend()}"
        "</aside>"
    )


def build_live_map(
    stations: list[dict[str, Any]],
    roads: dict[str, Any] | None,
    activity: list[dict[str, Any]],
    alarms: list[dict[str, Any]],
    *,
    assets_base: str = DEFAULT_BASE,
    live_url: str = "/api/live",
    activity_url: str = "/api/stations/activity",
    alarms_url: str = "/api/alarms",
    search_url: str = "/api/bikes/search",
    bikes_url: str = "/api/bikes",
    user_name: str | None = None,
    tile_url: str | None = None,
    tile_attribution: str | None = None,
) -> str:
    """The full HTML of the live map page; it loads Leaflet from `assets_base` and nothing from elsewhere.

    Its alarm buttons, bike search and trajectory replay call the API at alarms_url, search_url and bikes_url
    with the page's session cookie; "Assign to me" assigns to user_name.
    """
    m = base_map(assets_base=assets_base, tile_url=tile_url, tile_attribution=tile_attribution)
    add_roads(m, roads)
    station_layer = folium.FeatureGroup(name="Stations")
    station_layer.add_to(m)
    markers = add_stations(station_layer, stations, activity)
    alarm_layer = folium.FeatureGroup(name="Alarms")
    alarm_layer.add_to(m)
    fit_to(m, [(s["lat"], s["lon"]) for s in stations] or list(road_points(roads)))
    folium.LayerControl(collapsed=True, position="topleft").add_to(m)
    config = {
        "liveUrl": live_url,
        "activityUrl": activity_url,
        "activityIntervalMs": ACTIVITY_INTERVAL_S * 1000,
        "alarmsUrl": alarms_url,
        "searchUrl": search_url,
        "bikesUrl": bikes_url,
        "replayWindowsH": list(REPLAY_WINDOWS_H),
        "me": user_name,
        "stations": [{k: s.get(k) for k in ("station_id", "name", "lat", "lon", "state")} for s in stations],
        "activity": activity,
        "alarms": [a for a in alarms if a.get("state") != "cleared"],
        "stateColours": STATE_COLOURS,
        "stateLabels": STATE_LABELS,
        "severityColours": SEVERITY_COLOURS,
        "kindLabels": KIND_LABELS,
        "fewMoves": FEW_MOVES,
    }
    m.add_child(LiveFeed(m, markers, alarm_layer, config))
    return m.get_root().render()
