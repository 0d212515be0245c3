"""A station's own HTTP port (optional, BIKEGUARD_GATEWAY_METRICS_PORT): Prometheus `/metrics` (spool, uplink and
radio counters) and `/rejected` (the rejected-runs files, JSON lines).

prometheus_client's WSGI app and server serve them from threads of their own; the counters live in the event loop
and the spool's SQLite connection belongs to the loop's thread, so a scrape asks the loop for a snapshot rather than
reading them from the server's thread. `/rejected` reads the files directly: they are safe to read while written.
"""

from __future__ import annotations

import asyncio
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

from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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


class StationCollector(Collector):
    """The stations of one gateway process, labelled by station, read at scrape time (each source is a station's
    figures(), called on the event loop)."""

    def __init__(self, sources: Sequence[Callable[[], StationFigures]], loop: asyncio.AbstractEventLoop) -> None:
        self.sources = list(sources)
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        """One family per figure, a sample per station."""
        try:
            figures = asyncio.run_coroutine_threadsafe(self._figures(), self.loop).result(SNAPSHOT_TIMEOUT_S)
        # A stuck or closed loop, or a spool closed as its station stops: say so rather than hang or fail.
        except (FutureTimeout, RuntimeError, sqlite3.Error) as exc:
            log.warning("metrics scrape: no snapshot from the event loop (%s)", type(exc).__name__)
            return
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for f in figures:
            for kinds, cls in ((f.counters, CounterMetricFamily), (f.gauges, GaugeMetricFamily)):
                for name, value in kinds.items():
                    family = families.get(name)
                    if family is None:
                        family = families[name] = cls(f"bikeguard_gateway_{name}", _HELP[name], labels=["station"])
                    family.add_metric([f.station_id], value)
        yield from families.values()
        rejected = CounterMetricFamily(
            "bikeguard_gateway_frames_rejected", "Rejected radio byte runs by reason", labels=["station", "reason"]
        )
        hotlists = CounterMetricFamily(
            "bikeguard_gateway_hotlist_rejected",
            "Hot-list messages refused (the last good list kept) by reason",
            labels=["station", "reason"],
        )
        refused = CounterMetricFamily(
            "bikeguard_gateway_commands_refused",
            "Commands not acted on (unsigned, forged, for another station, expired, replayed…) by reason",
            labels=["station", "reason"],
        )
        done = CounterMetricFamily(
            "bikeguard_gateway_commands_done", "Signed commands of the backend acted on", labels=["station", "command"]
        )
        gps = CounterMetricFamily(
            "bikeguard_gateway_gps_rejected",
            "NMEA sentences refused (checksum, unparsable, no_fix, too_long) by reason",
            labels=["station", "reason"],
        )
        for f in figures:
            for reason, n in sorted(f.gps_rejected.items()):
                gps.add_metric([f.station_id, reason], n)
            for reason, n in sorted(f.frames_rejected.items()):
                rejected.add_metric([f.station_id, reason], n)
            for reason, n in sorted(f.hotlist_rejected.items()):
                hotlists.add_metric([f.station_id, reason], n)
            for reason, n in sorted(f.commands_refused.items()):
                refused.add_metric([f.station_id, reason], n)
            for name, n in sorted(f.commands_done.items()):
                done.add_metric([f.station_id, name], n)
        yield rejected
        yield hotlists
        yield refused
        yield done
        yield gps

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
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StationCollector(sources, asyncio.get_running_loop()))
    if process is not None:
        registry.register(ProcessCollector(process, asyncio.get_running_loop()))
    app = RejectedApp(rejected or {}, make_wsgi_app(registry))

    class Server(ThreadingWSGIServer):
        """prometheus_client's threading server, in the address family of `host` (IPv4 or IPv6)."""

    Server.address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics {host}:{port}", daemon=True).start()
    log.info("metrics of %d station(s) on http://%s:%d/metrics and /rejected", len(sources), host, server.server_port)
    return server
