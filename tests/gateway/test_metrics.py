"""A station's own /metrics (BIKEGUARD_GATEWAY_METRICS_PORT): off by default, on 127.0.0.1 when asked, with the
spool, uplink and radio counters of the real gateway reading a pty."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from bikeguard.services import Broker
from gateway import metrics
from gateway.settings import GatewaySettings
from gateway.station import run_fleet
from protocol.frames import encode
from tests.gateway.harness import FakeModule, beacon, eventually, fast_settings, scrape_metrics, watching

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_station_metrics_are_off_unless_a_port_is_given() -> None:
    settings = GatewaySettings(station_id="st-1", serial_url="/dev/null")
    assert settings.metrics_port is None and settings.metrics_host == "127.0.0.1"


async def test_a_station_serves_its_spool_uplink_and_radio_counters_on_localhost(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    port = _free_port()
    settings = fast_settings(topic_prefix, module.path, broker.url, tmp_path / "s.spool", metrics_port=port)
    station = (("station", topic_prefix),)
    async with watching(broker, topic_prefix) as watcher:
        task = asyncio.create_task(run_fleet([settings]))
        try:
            await watcher.wait("status")
            await asyncio.sleep(0.3)  # the port opens (the status comes from the MQTT side)
            module.send_raw(b"\x00\xffnoise" + encode(beacon(0x55)))
            await watcher.wait("sightings")

            # The confirmation comes back through the broker: scrape until it has (as eventually() does).
            async with asyncio.timeout(15):
                samples = await scrape_metrics(port)
                while samples.get(("bikeguard_gateway_batches_confirmed_total", station), 0) < 1:
                    await asyncio.sleep(0.05)
                    samples = await scrape_metrics(port)
            assert samples[("bikeguard_gateway_batches_confirmed_total", station)] == 1
            assert samples[("bikeguard_gateway_frames_decoded_total", station)] >= 1
            assert samples[("bikeguard_gateway_beacons_total", station)] == 1
            assert samples[("bikeguard_gateway_uplink_connected", station)] == 1
            assert samples[("bikeguard_gateway_spool_unconfirmed", station)] == 0
            assert samples[("bikeguard_gateway_batches_resent_total", station)] == 0
            assert samples[("bikeguard_gateway_batch_requests_total", station)] == 0  # nothing went missing
            assert samples[("bikeguard_gateway_spool_dropped_sightings_total", station)] == 0
            rejected = {k[1]: v for k, v in samples.items() if k[0] == "bikeguard_gateway_frames_rejected_total"}
            assert sum(rejected.values()) >= 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    # Stopped with the station: the port is free again.
    await eventually(lambda: _connect_refused(port), what="metrics server closed")


def _connect_refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_the_stations_text_reads_as_prometheus_clients_own_rendering_of_the_same_figures() -> None:
    # The stations' /metrics text is written by hand (fast at 1,000 stations): a scraper must read from it exactly
    # what prometheus_client's own families of the same figures say, odd station ids and reasons included.
    odd = metrics.StationFigures('st "7" \\ back\nslash')
    odd.counters = {"beacons": 12, "frames_decoded": 3}
    odd.gauges = {"spool_depth": 2, "uplink_connected": 1}
    odd.frames_rejected = {"crc": 4, 'odd "reason"': 1}
    odd.commands_done = {"arm": 1}
    plain = metrics.StationFigures("st-8")
    plain.counters = {"beacons": 0, "gps_fixes": 9}
    plain.gauges = {"spool_depth": 0}
    plain.gps_rejected = {"checksum": 2}
    plain.hotlist_rejected = {"signature": 5}
    plain.commands_refused = {"replayed": 6}
    figures = [odd, plain]

    class Reference(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from reference()

    def reference() -> Iterator[Metric]:
        for cls, field in ((CounterMetricFamily, "counters"), (GaugeMetricFamily, "gauges")):
            names = dict.fromkeys(n for f in figures for n in getattr(f, field))
            for n in names:
                family = cls(f"bikeguard_gateway_{n}", metrics._HELP[n], labels=["station"])
                for f in figures:
                    if n in getattr(f, field):
                        family.add_metric([f.station_id], getattr(f, field)[n])
                yield family
        for n, text, label in metrics._LABELLED:
            family = CounterMetricFamily(f"bikeguard_gateway_{n}", text, labels=["station", label])
            for f in figures:
                for key, value in getattr(f, n).items():
                    family.add_metric([f.station_id, key], value)
            yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Reference())
    assert _parsed(metrics.render_stations(figures)) == _parsed(generate_latest(registry).decode())
    assert metrics.render_stations([]).count("# TYPE") == len(metrics._LABELLED)  # the labelled families, empty


def _parsed(text: str) -> dict[str, tuple[str, str, set[tuple[str, tuple[tuple[str, str], ...], float]]]]:
    return {
        family.name: (
            family.type,
            family.documentation,
            {(s.name, tuple(sorted(s.labels.items())), s.value) for s in family.samples},
        )
        for family in text_string_to_metric_families(text)
    }
