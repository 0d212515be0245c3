"""The live map page police watch: stations, roads, active alarms with their trails, fed by SSE."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import folium
from branca.element import MacroElement
from folium.template import Template

from maps import markup, replay
from maps.assets import DEFAULT_BASE
from maps.basemap import base_map, fit_to
from maps.roads import ROAD_COLOUR, add_roads, road_points
from maps.stations import MOBILE_RING, STATE_COLOURS, StationMarker, add_stations
from maps.words import LANGUAGES, words

ACTIVITY_INTERVAL_S = 10
REPLAY_WINDOWS_H = (6, 24, 72, 168)
"""Time windows the replay offers (hours back from now); the second is the default."""
STOLEN_REFRESH_S = 300
"""How often the stolen bikes' list is read again with nothing to prompt it (each read is audited)."""
FEW_MOVES = 20
"""Under this many moves seen from a station, its "likely next station" is marked as resting on few."""
SEVERITY_COLOURS: dict[str, str] = {"critical": "#dc2626", "warning": "#f59e0b", "info": "#3b82f6"}


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
        lang: str = "en",
        user_name: str | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # branca's MacroElement is untyped
        self._name = "LiveFeed"
        w = words(lang)
        self.title = markup.text(w["title"])
        self.css = replay.style() + replay.source("live.css")
        self.code = replay.script() + replay.source("live.js")
        self.chrome = _chrome(w, lang, user_name, config.get("zoneEditorUrl"))
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


def _legend(w: dict[str, str], zone_editor_url: str | None = None) -> str:
    t = {key: markup.text(text) for key, text in w.items()}
    states = "".join(
        f'<li><span class="bg-key-dot" style="background:{colour}"></span>{t["station_" + state]}</li>'
        for state, colour in STATE_COLOURS.items()
    )
    editor = f' · <a class="bg-zones-link" href="{zone_editor_url}">{t["zones_editor"]}</a>' if zone_editor_url else ""
    return (
        f'<section id="bg-legend"><h3>{t["legend"]}</h3><ul>'
        f"{states}"
        f'<li><span class="bg-key-dot" style="border:2px dashed {MOBILE_RING}"></span>{t["legend_mobile"]}</li>'
        f'<li><span class="bg-key-count">12</span>{t["legend_passages"]}</li>'
        f'<li><span class="bg-key-alarm"></span>{t["legend_alarm"]}</li>'
        '<li><span class="bg-key-line" style="background:repeating-linear-gradient(90deg,#dc2626 0 8px,'
        f'transparent 8px 12px)"></span>{t["legend_trail"]}</li>'
        f'<li><span class="bg-key-next"></span>{t["legend_next"]}</li>'
        f'<li><span class="bg-key-step">1</span>{t["legend_replay"]}</li>'
        f'<li><span class="bg-key-line" style="background:{ROAD_COLOUR}"></span>{t["legend_road"]}</li>'
        f'<li><span class="bg-key-zone"></span><span>{t["zones_legend"]}{editor}</span></li>'
        "</ul></section>"
    )


def _account(t: dict[str, str], lang: str, user_name: str | None) -> str:
    """Language choice, who is signed in, and signing out."""
    choices = "".join(
        f'<a class="bg-lang{" current" if code == lang else ""}" href="?lang={code}" data-lang="{code}">'
        f"{markup.text(label)}</a>"
        for code, label in LANGUAGES.items()
    )
    who = ""
    if user_name is not None:
        name = markup.text(words(lang)["signed_in_as"].format(name=user_name))
        who = f'<span class="bg-who">{name}</span><button type="button" id="bg-sign-out">{t["sign_out"]}</button>'
    return f'<nav class="bg-account">{choices}{who}</nav>'


def _tools(t: dict[str, str], lang: str, zone_editor_url: str | None) -> str:
    """The police's other pages (the console of a role that may draw zones is a police or admin one)."""
    if zone_editor_url is None:
        return ""
    links = (("/hotsheet", "tool_hotsheet"), ("/statistics", "tool_statistics"), (zone_editor_url, "tool_zones"))
    return (
        '<nav class="bg-tools">' + "".join(f'<a href="{url}?lang={lang}">{t[key]}</a>' for url, key in links) + "</nav>"
    )


def _chrome(w: dict[str, str], lang: str, user_name: str | None, zone_editor_url: str | None = None) -> str:
    t = {key: markup.text(text) for key, text in w.items()}
    return (
        '<header id="bg-header">'
        f'<div class="bg-brand"><span class="bg-logo"></span><h1>{t["title"]}</h1></div>'
        '<div class="bg-stats">'
        '<div class="bg-stat alarm" id="bg-alarm-stat">'
        f'<b id="bg-alarm-count">0</b><span>{t["active_alarms"]}</span></div>'
        f'<div class="bg-stat"><b id="bg-online-count">–</b><span>{t["stations_online"]}</span></div>'
        f'<div class="bg-stat"><b id="bg-passage-count">–</b><span>{t["passages_10min"]}</span></div>'
        "</div>"
        '<div class="bg-status">'
        f'<div id="bg-live-status" class="connecting"><i></i><span>{t["live_connecting"]}</span></div>'
        f'<div id="bg-activity-status">{t["activity_waiting"]}</div>'
        "</div>"
        f"{_account(t, lang, user_name)}"
        '<div id="bg-clock"></div>'
        "</header>"
        '<aside id="bg-panel">'
        f"{_tools(t, lang, zone_editor_url)}"
        '<form id="bg-search" autocomplete="off">'
        f'<input id="bg-search-q" name="q" maxlength="40" required placeholder="{t["search_placeholder"]}">'
        f'<input id="bg-search-case" name="case_number" maxlength="40" placeholder="{t["case_placeholder"]}"'
        f' title="{t["case_title"]}">'
        f'<button type="submit">{t["find"]}</button>'
        "</form>"
        # Outside the form: a found bike's theft report is a form of its own, and forms do not nest.
        '<div id="bg-search-result" role="status"></div>'
        '<div id="bg-action-status" role="status"></div>'
        '<nav id="bg-panel-tabs" role="tablist">'
        f'<button type="button" role="tab" class="current" aria-selected="true" data-panel="alarms">{t["tab_alarms"]}'
        ' <b id="bg-panel-count">0</b></button>'
        f'<button type="button" role="tab" aria-selected="false" data-panel="stolen">{t["tab_stolen"]}'
        ' <b id="bg-stolen-count">–</b></button>'
        "</nav>"
        '<section id="bg-alarms-section">'
        f'<h2>{t["active_alarms_heading"]} <small id="bg-panel-acked"></small></h2>'
        f'<p id="bg-no-alarms">{t["no_alarms"]}</p>'
        '<ol id="bg-alarm-list"></ol>'
        "</section>"
        '<section id="bg-stolen-section" hidden>'
        f"<h2>{t['stolen_heading']}</h2>"
        f'<p id="bg-stolen-none">{t["stolen_loading"]}</p>'
        '<ol id="bg-stolen-list"></ol>'
        "</section>"
        f"{_legend(w, zone_editor_url)}"
        "</aside>"
    )


def _station_config(station: dict[str, Any]) -> dict[str, Any]:
    """What the page's script knows of a station; a mobile reader's last fix time as ISO 8601."""
    config = {k: station.get(k) for k in ("station_id", "name", "lat", "lon", "state", "mobile", "position_at")}
    if isinstance(config["position_at"], datetime):
        config["position_at"] = config["position_at"].isoformat()
    return config


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
    stolen_url: str | None = None,
    zones: list[dict[str, Any]] | None = None,
    zone_editor_url: str | None = None,
    user_name: str | None = None,
    tile_url: str | None = None,
    tile_attribution: str | None = None,
    lang: str = "en",
) -> str:
    """The full HTML of the live map page, in `lang`; it loads Leaflet from `assets_base` and nothing from elsewhere.

    Its alarm buttons, bike search, theft reports, recoveries and trajectory replay call the API at alarms_url,
    search_url and bikes_url with the page's session cookie; "Assign to me" assigns to user_name, who can sign out
    from the header. With stolen_url, a tab lists the bikes reported stolen. `zones` (backend.zones) are drawn under
    the stations, and a stolen bike's alarm shows the zone borders it crossed; zone_editor_url links the editor.
    """
    m = base_map(assets_base=assets_base, tile_url=tile_url, tile_attribution=tile_attribution)
    add_roads(m, roads)
    station_layer = folium.FeatureGroup(name="Stations")
    station_layer.add_to(m)
    markers = add_stations(station_layer, stations, activity, lang)
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
        "stations": [_station_config(s) for s in stations],
        "activity": activity,
        "alarms": [a for a in alarms if a.get("state") != "cleared"],
        "stateColours": STATE_COLOURS,
        "severityColours": SEVERITY_COLOURS,
        "fewMoves": FEW_MOVES,
        "stolenUrl": stolen_url,
        "stolenRefreshMs": STOLEN_REFRESH_S * 1000,
        "zones": [{"name": z["name"], "geometry": z["geometry"]} for z in zones or []],
        "zoneEditorUrl": zone_editor_url,
        "words": words(lang),
        "lang": lang,
    }
    m.add_child(LiveFeed(m, markers, alarm_layer, config, lang, user_name))
    return m.get_root().render()
