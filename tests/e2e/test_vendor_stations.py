"""Vendor (MR7901) stations on real parts: simulated vendor stations over TCP → the bridge → broker → backend →
PostgreSQL → a stolen chip's alarm on the live feed; and no acknowledged read lost to a bridge killed outright."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from pydantic import SecretStr

from bikeguard.demo import bootstrap_admin, report_theft_as_owner, seed_backend, sign_in
from bikeguard.services import Broker, free_port
from firmware_sim.mr7901_station import VendorFleet, VendorStation
from firmware_sim.runner import SimRunner, vendor_stations
from firmware_sim.town import Town
from gateway.vendor.bridge import Bridge, BridgeSettings
from gateway.vendor.devices import VendorDevice
from protocol.frames import Beacon, TagFlags
from protocol.messages import format_tag
from protocol.signing import public_key_of
from tests import factories
from tests.backend.test_ingest import wait_until
from tests.e2e.test_chip_to_alarm import LiveFeedReader

SHANGHAI = "Asia/Shanghai"
HOTLIST_PUBLIC_KEY = public_key_of(factories.SECRETS["hotlist_signing_key"].get_secret_value())
STATION_TIMINGS = {"passage_gap_s": 1.0, "batch_interval_s": 0.2, "status_interval_s": 5}


class BridgeThread:
    """A bridge in an event loop of its own on a thread, as a station host runs it beside other work."""

    def __init__(self, port: int, devices: list[VendorDevice], spool_dir: Path) -> None:
        settings = BridgeSettings(
            listen=f"127.0.0.1:{port}", devices_file=spool_dir / "devices.toml", spool_dir=spool_dir
        )
        self.bridge = Bridge(settings, devices, {**STATION_TIMINGS, "hotlist_public_key": HOTLIST_PUBLIC_KEY})
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="vendor-bridge", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.bridge.run())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=15)


def test_a_stolen_bike_passing_a_vendor_station_raises_an_alarm_on_the_live_feed(
    backend_url: str,
    broker: Broker,
    database_url: str,
    tmp_path: Path,
) -> None:
    town = Town.generate(7, stations=5, bikes=40)
    staff = seed_backend(backend_url, town, bootstrap_admin(database_url))
    # Statuses other tests' stations of the same ids left retained on the shared broker reach the backend when it
    # subscribes, before this town is registered: refused then, and not this test's business.
    registered_at = _rows(database_url, "SELECT now()")[0][0]
    police = sign_in(backend_url, staff.police)
    port = free_port()
    vendors = vendor_stations(town, len(town.stations), "127.0.0.1", port, SHANGHAI)  # every station a vendor's
    devices = [VendorDevice(v.device_id, sid, ZoneInfo(SHANGHAI), SecretStr(broker.url)) for sid, v in vendors.items()]
    stranger = VendorStation("127.0.0.1", port, "MR7901-STRANGER", retry_s=0.5)
    bridge = BridgeThread(port, devices, tmp_path)
    sims = VendorFleet([*vendors.values(), stranger])
    runner = SimRunner(town, listeners=vendors)
    feed = LiveFeedReader(f"{backend_url}/api/live", dict(police.headers))
    bridge.start()
    sims.start()
    runner.start()
    try:
        assert feed.connected.wait(10)
        wait_until(lambda: _count(database_url, "SELECT count(*) FROM sightings") > 0, timeout_s=60)
        assert feed.alarms == []

        bike = runner.steal(town.bike_to_steal().bike_no)
        r = report_theft_as_owner(backend_url, staff, bike.plate)
        assert r.status_code == 201, r.text
        tag = format_tag(bike.tag_id)
        wait_until(lambda: any(a["tag_id"] == tag for a in feed.alarms), timeout_s=60)
        alarm = next(a for a in feed.alarms if a["tag_id"] == tag)
        assert alarm["kind"] == "stolen_chip_seen" and alarm["plate"] == bike.plate
        assert alarm["station_id"] in vendors

        # Every vendor station is online from its heartbeats; the stranger was refused and never logged in.
        wait_until(
            lambda: (
                {s["state"] for s in police.get("/api/stations").json() if s["station_id"] in vendors} == {"online"}
            ),
            timeout_s=30,
        )
        assert stranger.stats.logins == 0 and stranger.stats.registrations == 0
        assert bridge.bridge.unknown_devices["MR7901-STRANGER"] >= 1
        refused = (
            "SELECT topic, reason FROM rejected_messages WHERE split_part(topic, '/', 4) = ANY(%s) AND received_at > %s"
        )
        assert _rows(database_url, refused, list(vendors), registered_at) == []
    finally:
        feed.stop()
        runner.stop()
        sims.stop()
        bridge.stop()
        police.close()


def _bridge_process(port: int, devices_file: Path, spool_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BIKEGUARD_GATEWAY_PASSAGE_GAP_S": "1.0",
        "BIKEGUARD_GATEWAY_BATCH_INTERVAL_S": "0.2",
        "BIKEGUARD_GATEWAY_RECONNECT_MIN_S": "0.1",
    }
    args = ["--listen", f"127.0.0.1:{port}", "--devices", str(devices_file), "--spool-dir", str(spool_dir)]
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "vendor", *args], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc
        assert proc.poll() is None, "the bridge exited"
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the bridge did not listen")


def test_no_acknowledged_read_is_lost_to_a_dropped_connection_or_a_killed_bridge(
    backend_url: str,
    broker: Broker,
    database_url: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    station_id = f"{topic_prefix}-vendor"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station_id)
    devices_file = tmp_path / "devices.toml"
    devices_file.write_text(
        f'[[device]]\ndevice_id = "MR-KILL"\nstation_id = "{station_id}"\ntime_zone = "{SHANGHAI}"\n'
        f'mqtt_url = "{broker.url}"\n'
    )
    port = free_port()
    sim = VendorStation("127.0.0.1", port, "MR-KILL", upload_interval_s=0.05, retry_s=0.2, reply_timeout_s=3)
    sims = VendorFleet([sim])
    tags = [0x7A000000 + i for i in range(300)]
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    bridge = _bridge_process(port, devices_file, tmp_path)
    sims.start()
    try:
        for i, tag in enumerate(tags):
            # One read per tag, each a second apart in station time: every read is a passage of its own.
            sim.hear(Beacon(tag, i, TagFlags(0), -60, 0), start + timedelta(seconds=i))
            time.sleep(0.005)
            if i == 100:
                os.kill(bridge.pid, signal.SIGKILL)  # mid-stream, uploads taken and not yet acknowledged
                bridge.wait()
                bridge = _bridge_process(port, devices_file, tmp_path)
        # The station forgets a read once its upload is acknowledged: each of those must reach the database.
        wait_until(lambda: sim.stats.reads_uploaded == len(tags), timeout_s=60)
        assert sim.stats.connections >= 2 and sim.stats.reads_dropped == 0
        stored = "SELECT count(DISTINCT tag_id) FROM sightings WHERE station_id = %s"
        wait_until(lambda: _count(database_url, stored, station_id) == len(tags), timeout_s=60)
        rows = _rows(database_url, "SELECT tag_id, first_seen_at FROM sightings WHERE station_id = %s", station_id)
        assert {(tag, start + timedelta(seconds=i)) for i, tag in enumerate(tags)} <= set(rows)
    finally:
        sims.stop()
        bridge.send_signal(signal.SIGTERM)
        try:
            bridge.wait(timeout=15)
        except subprocess.TimeoutExpired:
            bridge.kill()


def _count(url: str, sql: str, *args: object) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(sql, args).fetchone()[0])  # type: ignore[index]


def _rows(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()
