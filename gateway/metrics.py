"""A station's own Prometheus metrics (optional, BIKEGUARD_GATEWAY_METRICS_PORT): spool, uplink and radio counters.

prometheus_client serves them from a thread of its own; the counters live in the event loop and the spool's
SQLite connection belongs to the loop's thread, so a scrape asks the loop for a snapshot rather than reading them
from the server's thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

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


_HELP = {
    "beacons": "Tag beacons received",
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
    "hotlist_rejected": "Hot-list messages refused as invalid",
    "frames_decoded": "Valid radio frames decoded",
    "frames_dropped": "Radio frames dropped because the gateway fell behind",
    "serial_port_errors": "Errors of the open serial port",
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
        for f in figures:
            for reason, n in sorted(f.frames_rejected.items()):
                rejected.add_metric([f.station_id, reason], n)
        yield rejected

    async def _figures(self) -> list[StationFigures]:
        return [figures() for figures in self.sources]


def serve(sources: Sequence[Callable[[], StationFigures]], host: str, port: int) -> WSGIServer:
    """Serve the stations' metrics on host:port (prometheus_client's server, on a thread of its own); called on
    the event loop whose stations they are."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StationCollector(sources, asyncio.get_running_loop()))
    server, _thread = start_http_server(port, host, registry)
    log.info("metrics of %d station(s) on http://%s:%d/metrics", len(sources), host, server.server_port)
    return server
