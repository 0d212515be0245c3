"""A small town to draw (stations, roads, activity, alarms) and a local server for map pages."""

from __future__ import annotations

import json
import mimetypes
import queue
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backend.web.fonts import FONT_URL, chinese_font

HOST = "127.0.0.1"
ORIGIN_LAT, ORIGIN_LON = 30.2700, 120.1500
STREET_STEP_DEG, AVENUE_STEP_DEG = 0.0040, 0.0050
STREETS = ["North Rd", "Canal St", "Market St", "Station Rd", "South Rd"]
AVENUES = ["West Ave", "Mill Ave", "1st Ave", "2nd Ave", "Park Ave", "East Ave"]


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def _line(coords: list[tuple[float, float]], name: str) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"name": name},
        "geometry": {"type": "LineString", "coordinates": [[lon, lat] for lat, lon in coords]},
    }


def make_town() -> dict[str, Any]:
    """A grid town: 5 streets x 6 avenues, a diagonal boulevard, 20 stations at intersections."""
    lats = [ORIGIN_LAT + STREET_STEP_DEG * (2 - i) for i in range(len(STREETS))]
    lons = [ORIGIN_LON + AVENUE_STEP_DEG * (j - 2.5) for j in range(len(AVENUES))]
    pad_lat, pad_lon = STREET_STEP_DEG * 0.6, AVENUE_STEP_DEG * 0.6
    west, east = lons[0] - pad_lon, lons[-1] + pad_lon
    north, south = lats[0] + pad_lat, lats[-1] - pad_lat
    features = [_line([(lat, west), (lat, east)], n) for lat, n in zip(lats, STREETS, strict=True)]
    features += [_line([(north, lon), (south, lon)], n) for lon, n in zip(lons, AVENUES, strict=True)]
    boulevard = [(lats[0] + pad_lat * 0.5, lons[0] - pad_lon * 0.5), (lats[-1], lons[-1])]
    features.append(_line(boulevard, "Boulevard"))
    ring = [(lats[1], lons[-1]), (lats[1] + 0.001, lons[-1] + 0.004), (lats[0] + 0.003, lons[-1] + 0.006)]
    features.append(_line(ring, "Ring Rd"))
    stations: list[dict[str, Any]] = []
    activity: list[dict[str, Any]] = []
    n = 0
    for i, (lat, street) in enumerate(zip(lats, STREETS, strict=True)):
        for j, (lon, avenue) in enumerate(zip(lons, AVENUES, strict=True)):
            if (i + j) % 3 == 2:
                continue
            n += 1
            sid = f"S-{n:03d}"
            state = "offline" if n == 7 else "unknown" if n == 15 else "online"
            name = f"{street} / {avenue}"
            stations.append({"station_id": sid, "name": name, "lat": lat, "lon": lon, "state": state})
            if state == "online":
                activity.append({"station_id": sid, "passages": (n * 37) % 61 + (40 if i == 2 else 0)})
    roads = {"type": "FeatureCollection", "features": features}
    return {"stations": stations, "roads": roads, "activity": activity, "lats": lats, "lons": lons}


def make_alarm(town: dict[str, Any], *, alarm_id: int = 41, now: datetime | None = None) -> dict[str, Any]:
    """A stolen chip seen at four stations in turn, the latest 20 s ago."""
    now = now or datetime.now(UTC)
    by_id = {s["station_id"]: s for s in town["stations"]}
    route = ["S-002", "S-009", "S-010", "S-011"]
    seen = [now - timedelta(seconds=s) for s in (290, 200, 110, 20)]
    trail = [
        {"station_id": sid, "lat": by_id[sid]["lat"], "lon": by_id[sid]["lon"], "seen_at": _iso(at)}
        for sid, at in zip(route, seen, strict=True)
    ]
    last = by_id[route[-1]]
    return {
        "id": alarm_id,
        "kind": "stolen_chip_seen",
        "severity": "critical",
        "state": "active",
        "tag_id": "0A1B2C3D",
        "plate": "HZ A·38291",
        "station_id": last["station_id"],
        "station_name": last["name"],
        "lat": last["lat"],
        "lon": last["lon"],
        "first_seen_at": trail[0]["seen_at"],
        "last_seen_at": trail[-1]["seen_at"],
        "sightings": 4,
        "trail": trail,
        "next_stations": [
            {
                "station_id": sid,
                "name": by_id[sid]["name"],
                "lat": by_id[sid]["lat"],
                "lon": by_id[sid]["lon"],
                "probability": round(moves / (48 + 2), 3),
                "eta_at": _iso(now + timedelta(seconds=eta)),
                "moves": moves,
                "based_on_moves": 48,
            }
            for sid, moves, eta in (("S-012", 31, 70), ("S-017", 11, 95))
        ],
    }


def make_trajectory(town: dict[str, Any], *, bike_id: int = 7, now: datetime | None = None) -> dict[str, Any]:
    """A bike's trajectory summary as the API answers it: parked at S-001, then the stolen alarm's route."""
    from backend import trajectories

    now = now or datetime.now(UTC)
    by_id = {s["station_id"]: s for s in town["stations"]}
    # (station, seconds ago it arrived, seconds it stayed in range)
    visits = [("S-001", 420, 60), ("S-002", 290, 15), ("S-009", 200, 45), ("S-010", 110, 10), ("S-011", 20, 12)]
    passages = [
        (
            sid,
            by_id[sid]["name"],
            by_id[sid]["lat"],
            by_id[sid]["lon"],
            now - timedelta(seconds=ago),
            now - timedelta(seconds=ago - stay),
        )
        for sid, ago, stay in visits
    ]
    summary = trajectories.to_summary(trajectories.build(0x0A1B2C3D, passages, bike_id))
    return summary | {"since": _iso(now - timedelta(hours=24)), "until": _iso(now)}


def make_tamper_alarm(town: dict[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """An acknowledged tamper warning at one station, already on the page when it is built."""
    now = now or datetime.now(UTC)
    st = next(s for s in town["stations"] if s["station_id"] == "S-017")
    at = _iso(now - timedelta(minutes=6))
    return {
        "id": 38,
        "kind": "tamper",
        "severity": "warning",
        "state": "acknowledged",
        "tag_id": "7F00A1C4",
        "plate": None,
        "station_id": st["station_id"],
        "station_name": st["name"],
        "lat": st["lat"],
        "lon": st["lon"],
        "first_seen_at": at,
        "last_seen_at": at,
        "sightings": 1,
        "trail": [],
    }


@pytest.fixture
def town() -> dict[str, Any]:
    """Stations, roads and activity of a small grid town."""
    return make_town()


@pytest.fixture
def alarm_factory() -> Callable[..., dict[str, Any]]:
    """Builds stolen-chip alarms with a 4-point trail for a town."""
    return make_alarm


@pytest.fixture
def trajectory_factory() -> Callable[..., dict[str, Any]]:
    """Builds a bike's trajectory summary (stops and legs) through a town."""
    return make_trajectory


@pytest.fixture
def tamper_alarm_factory() -> Callable[..., dict[str, Any]]:
    """Builds an acknowledged tamper warning for a town."""
    return make_tamper_alarm


class MapServer:
    """A local HTTP server for one map page, the Leaflet assets, a fake live feed and activity endpoint."""

    def __init__(self, page_html: str, assets_dir: Path, activity: list[dict[str, Any]]) -> None:
        self.page_html = page_html.encode()
        self.assets_dir = assets_dir.resolve()
        self.activity = activity
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.live_clients = 0
        self.requests: list[str] = []
        # Answers to API calls the page makes on its own ((method, path) -> JSON), and the calls it made.
        self.api_replies: dict[tuple[str, str], Any] = {}
        self.api_calls: list[tuple[str, str, Any]] = []
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer((HOST, 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{HOST}:{self._httpd.server_port}"

    def send(self, event: str, data: dict[str, Any]) -> None:
        """Queue one SSE event for the connected page."""
        self.events.put((event, data))

    def start(self) -> MapServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        return type("Handler", (_MapHandler,), {"map_server": self})


class _MapHandler(BaseHTTPRequestHandler):
    """Serves one MapServer's page, fake API answers, live events and Leaflet assets."""

    map_server: MapServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.map_server.requests.append(path)
        if path == "/":
            self._reply(200, self.map_server.page_html, "text/html; charset=utf-8")
        elif path == "/api/stations/activity":
            self._reply(200, json.dumps(self.map_server.activity).encode(), "application/json")
        elif path == "/api/live":
            self._live()
        elif ("GET", path) in self.map_server.api_replies:
            self.map_server.api_calls.append(("GET", self.path, None))
            self._reply(200, json.dumps(self.map_server.api_replies[("GET", path)]).encode(), "application/json")
        elif path == FONT_URL:  # the header's 中文 asks for the Chinese web font, as the backend serves it
            self._reply(200, chinese_font(), "font/otf")
        elif path.startswith("/assets/leaflet/"):
            target = (self.map_server.assets_dir / path.removeprefix("/assets/leaflet/")).resolve()
            if target.is_file() and target.is_relative_to(self.map_server.assets_dir):
                kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                self._reply(200, target.read_bytes(), kind)
            else:
                self._reply(404, b"not found", "text/plain")
        else:
            self._reply(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        self.map_server.requests.append(path)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.map_server.api_calls.append(("POST", path, json.loads(raw) if raw else None))
        if ("POST", path) in self.map_server.api_replies:
            self._reply(200, json.dumps(self.map_server.api_replies[("POST", path)]).encode(), "application/json")
        else:
            self._reply(404, b'{"detail": "not found"}', "application/json")

    def _live(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.map_server.live_clients += 1
        try:
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            while not self.map_server._stop.is_set():
                try:
                    event, data = self.map_server.events.get(timeout=0.25)
                except queue.Empty:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def map_server_factory() -> Iterator[Callable[[str, list[dict[str, Any]]], MapServer]]:
    """Starts MapServers for built pages; stops them after the test."""
    from maps.assets import LEAFLET_DIR

    started: list[MapServer] = []

    def start(page_html: str, activity: list[dict[str, Any]]) -> MapServer:
        srv = MapServer(page_html, LEAFLET_DIR, activity).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
