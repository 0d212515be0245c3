"""A station's own HTTP port (optional, BIKEGUARD_GATEWAY_METRICS_PORT): Prometheus `/metrics` (spool, uplink and
radio counters) and `/rejected` (the rejected-runs files, JSON lines).

prometheus_client's threading server serves them from threads of their own; the counters live in the event loop
and the spool's SQLite connection belongs to the loop's thread, so a scrape asks the loop for a snapshot rather than
reading them from the server's thread, and writes the text itself (`render_stations`). `/rejected` reads the files
directly: they are safe to read while written.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import logging
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.rejected_runs import RejectedRun, parse_since, read_runs
from protocol.messages import utcnow

log = logging.getLogger(__name__)

# How long a scrape waits for the event loop: a loop that cannot answer in this time is itself the news.
SNAPSHOT_TIMEOUT_S = 5.0


@dataclass
class StationFigures:
    """One station's counters at one moment, taken on the event loop."""

    station_id: str
    counters: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, int] = field(default_factory=dict)
    frames_rejected: dict[str, int] = field(default_factory=dict)
    hotlist_rejected: dict[str, int] = field(default_factory=dict)
    commands_refused: dict[str, int] = field(default_factory=dict)
    commands_done: dict[str, int] = field(default_factory=dict)
    gps_rejected: dict[str, int] = field(default_factory=dict)


_HELP = {
    "beacons": "Tag beacons received (v1 and v2 chips)",
    "beacons_v2": "v2 chips' beacons received (also counted in beacons)",
    "hotlist_tags": "Stolen v1 chips' tag ids on the hot list held",
    "hotlist_eids": "Stolen v2 chips' ephemeral ids on the hot list held, over the windows kept",
    "spool_depth": "Messages held in the spool until confirmed (sightings) or acknowledged (alerts)",
    "spool_unconfirmed": "Sightings batches sent and not yet confirmed by the backend",
    "spool_bytes": "Payload bytes held in the spool",
    "spool_dropped_sightings": "Sightings thrown away because the spool was full",
    "spool_dropped_alerts": "Alerts thrown away to make room for newer alerts",
    "spool_dropped_batches": "Sightings batches thrown away because the spool was full",
    "uplink_connected": "1 while the broker is connected",
    "uplink_connects": "Connections made to the broker",
    "messages_published": "Messages published to the broker",
    "sightings_published": "Sightings published to the broker",
    "batches_confirmed": "Sightings batches the backend confirmed stored",
    "batches_resent": "Sightings batches sent again for want of a confirmation",
    "confirmations_rejected": "Confirmation messages refused as invalid",
    "station_restarts": "Times the fleet process restarted this station after its task failed",
    "batch_requests": "The backend's requests for batches it is missing",
    "batch_requests_rejected": "Batch requests refused as invalid",
    "batches_requested_held": "Requested batches still spooled, sent again at once",
    "batches_requested_gone": "Requested batches no longer held, answered as gone",
    "frames_decoded": "Valid radio frames decoded",
    "frames_dropped": "Radio frames dropped because the gateway fell behind",
    "serial_port_errors": "Errors of the open serial port",
    "rejected_runs_written": "Rejected radio byte runs written to the rejected-runs file",
    "rejected_runs_unsaved": "Rejected radio byte runs not written (the disk refused them or the writer fell behind)",
    "gps_fixes": "GPS fixes read from a mobile reader's receiver",
    "gps_port_errors": "Errors of the open GPS port",
    "sightings_without_fix": "A mobile reader's sightings closed without a position (no fresh GPS fix)",
}


# The families labelled by something besides the station: (name, which is also the figures' field, help, label).
_LABELLED = (
    ("frames_rejected", "Rejected radio byte runs by reason", "reason"),
    ("hotlist_rejected", "Hot-list messages refused (the last good list kept) by reason", "reason"),
    (
        "commands_refused",
        "Commands not acted on (unsigned, forged, for another station, expired, replayed…) by reason",
        "reason",
    ),
    ("commands_done", "Signed commands of the backend acted on", "command"),
    ("gps_rejected", "NMEA sentences refused (checksum, unparsable, no_fix, too_long) by reason", "reason"),
)

# The text exposition format these are written in (prometheus_client's own, and the one every scraper reads).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    """A label value as the text format quotes it."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render_stations(figures: Sequence[StationFigures]) -> str:
    """The stations' figures in the Prometheus text format, one family per figure and a sample per station.

    Written here rather than through prometheus_client's metric families: at 1,000 stations (27,000 samples) making
    and formatting those objects took 109-167 ms of the interpreter against 9-14 ms, on the metrics server's thread,
    while the event loop that serves every station waited for the interpreter's lock (docs/benchmarks.md, "Vendor
    bridge")."""
    out: list[str] = []
    ids = [_label(f.station_id) for f in figures]
    stations = [f'{{station="{station}"}} ' for station in ids]
    for field_name, suffix, kind in (("counters", "_total", "counter"), ("gauges", "", "gauge")):
        by_station = [getattr(f, field_name) for f in figures]
        for name in dict.fromkeys(name for values in by_station for name in values):
            full = f"bikeguard_gateway_{name}{suffix}"
            out.append(f"# HELP {full} {_help(_HELP[name])}\n# TYPE {full} {kind}\n")
            out.extend(
                f"{full}{station}{values[name]}\n"
                for station, values in zip(stations, by_station, strict=True)
                if name in values
            )
    for name, text, label in _LABELLED:
        full = f"bikeguard_gateway_{name}_total"
        out.append(f"# HELP {full} {_help(text)}\n# TYPE {full} counter\n")
        for f, station in zip(figures, ids, strict=True):
            out.extend(
                f'{full}{{station="{station}",{label}="{_label(key)}"}} {n}\n'
                for key, n in sorted(getattr(f, name).items())
            )
    return "".join(out)


class MetricsApp:
    """`GET /metrics`: the stations' figures (a snapshot each source, a station's figures(), takes on the event
    loop), rendered on the server's thread; then the process's own families (ProcessCollector), if any."""

    def __init__(
        self,
        sources: Sequence[Callable[[], StationFigures]],
        loop: asyncio.AbstractEventLoop,
        process: Callable[[], list[Metric]] | None = None,
    ) -> None:
        self.sources = list(sources)
        self.loop = loop
        self.process: CollectorRegistry | None = None
        if process is not None:
            self.process = CollectorRegistry(auto_describe=False)
            self.process.register(ProcessCollector(process, loop))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = self.exposition().encode()
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            # Level 1: Prometheus's own scrapes ask for gzip, and the text is repetitive enough for the fastest level.
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    def exposition(self) -> str:
        """The whole /metrics text: the stations' families, then the process's."""
        try:
            figures = asyncio.run_coroutine_threadsafe(self._figures(), self.loop).result(SNAPSHOT_TIMEOUT_S)
        # A stuck or closed loop, or a spool closed as its station stops: say so rather than hang or fail.
        except (FutureTimeout, RuntimeError, sqlite3.Error) as exc:
            log.warning("metrics scrape: no snapshot from the event loop (%s)", type(exc).__name__)
            figures = []
        text = render_stations(figures)
        if self.process is not None:
            text += generate_latest(self.process).decode()
        return text

    async def _figures(self) -> list[StationFigures]:
        return [figures() for figures in self.sources]


class RejectedApp:
    """`GET /rejected[?station=ID][&since=…]`: the kept rejected runs of this endpoint's stations as JSON lines,
    oldest first (`since`: an ISO 8601 time or an age such as 30m, 2h, 7d); every other path is `/metrics`."""

    def __init__(self, files: Mapping[str, Path], metrics_app: WSGIApplication) -> None:
        self.files = dict(files)
        self.metrics_app = metrics_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/rejected":
            return self.metrics_app(environ, start_response)
        params = parse_qs(environ.get("QUERY_STRING", ""))
        station = params.get("station", [None])[-1]
        if station is not None and station not in self.files:
            return _plain(start_response, "404 Not Found", f"no station {station} on this port")
        since = None
        if "since" in params:
            try:
                since = parse_since(params["since"][-1], utcnow())
            except ValueError as exc:
                return _plain(start_response, "400 Bad Request", str(exc))
        chosen = [station] if station is not None else sorted(self.files)
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        runs = heapq.merge(*(read_runs(self.files[s], since=since, station_id=s) for s in chosen), key=_at)
        return (run.to_json() + b"\n" for run in runs)


def _at(run: RejectedRun) -> float:
    return run.at.timestamp()


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode() + b"\n"]


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per request (a scrape every 15 s would fill a station's log)."""

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing."""


class ProcessCollector(Collector):
    """Figures of the process rather than of a station (the vendor bridge's connections and spool sync), made by
    `families` on the event loop at scrape time."""

    def __init__(self, families: Callable[[], list[Metric]], loop: asyncio.AbstractEventLoop) -> None:
        self.families = families
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        """The families, or nothing (logged) when the loop cannot answer."""

        async def snapshot() -> list[Metric]:
            return self.families()

        try:
            yield from asyncio.run_coroutine_threadsafe(snapshot(), self.loop).result(SNAPSHOT_TIMEOUT_S)
        except (FutureTimeout, RuntimeError) as exc:
            log.warning("metrics scrape: no process figures from the event loop (%s)", type(exc).__name__)


def serve(
    sources: Sequence[Callable[[], StationFigures]],
    host: str,
    port: int,
    rejected: Mapping[str, Path] | None = None,
    process: Callable[[], list[Metric]] | None = None,
) -> WSGIServer:
    """Serve the stations' /metrics and /rejected (`rejected`: station id -> its rejected-runs file) on host:port,
    on a thread of its own; called on the event loop whose stations they are. `process` adds the process's own
    figures (ProcessCollector)."""
    app = RejectedApp(rejected or {}, MetricsApp(sources, asyncio.get_running_loop(), process))

    class Server(ThreadingWSGIServer):
        """prometheus_client's threading server, in the address family of `host` (IPv4 or IPv6)."""

    Server.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics {host}:{port}", daemon=True).start()
    log.info("metrics of %d station(s) on http://%s:%d/metrics and /rejected", len(sources), host, server.server_port)
    return server
