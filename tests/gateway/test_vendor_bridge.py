"""gateway.vendor: MR7901 stations over real TCP → the bridge → a real broker, as sightings, alerts and statuses of
the Bikeguard stations they are registered to."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from bikeguard.services import Broker, free_port
from firmware_sim.mr7901_station import VendorStation
from gateway.spool import Spool
from gateway.station import Station
from gateway.vendor.bridge import BATCH_INTERVAL_S, Bridge, BridgeSettings
from gateway.vendor.devices import DevicesFileError, VendorDevice, devices_toml, load_devices
from protocol.frames import TagFlags
from protocol.ids import parse_tag
from protocol.messages import HOTLIST_VERSION_MAX, Sighting, SightingBatch, StationStatus, format_tag
from protocol.mr7901 import (
    Heartbeat,
    HeartbeatReply,
    Login,
    LoginReply,
    Message,
    Mr7901Decoder,
    Register,
    RegisterReply,
    TagRead,
    TagUpload,
    TagUploadReply,
    encode,
)
from tests.gateway.harness import beacon, eventually, scrape_metrics, watching

pytestmark = pytest.mark.anyio

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Reads carry whole seconds: a gap of two keeps two reads a second apart in one passage.
FAST = {"passage_gap_s": 2.0, "passage_max_s": 30, "batch_interval_s": 0.1, "reconnect_min_s": 0.1}


def device(station_id: str, broker: Broker, device_id: str | None = None) -> VendorDevice:
    """A device of the devices file, on the test's broker."""
    return VendorDevice(device_id or f"MR-{station_id}"[:16], station_id, SHANGHAI, SecretStr(broker.url))


@contextlib.asynccontextmanager
async def bridge_running(
    tmp_path: Path, devices: list[VendorDevice], stations: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[Bridge]:
    """A bridge on a free port in the background (its stations' settings FAST, then `stations`); cancelled (a clean
    stop) on the way out."""
    bridge = Bridge(
        BridgeSettings(listen="127.0.0.1:0", devices_file=tmp_path / "devices.toml", spool_dir=tmp_path, **settings),
        devices,
        station_overrides={**FAST, **(stations or {})},
    )
    task = asyncio.create_task(bridge.run())
    try:
        await eventually(lambda: task.done() or bridge.ready.is_set(), what="the bridge listening")
        if task.done():
            task.result()
        yield bridge
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def vendor_station(bridge: Bridge, device_id: str, **options: Any) -> AsyncIterator[VendorStation]:
    """A simulated MR7901 station connected to the bridge."""
    assert bridge.port is not None
    options = {"upload_interval_s": 0.05, "retry_s": 0.1, "reply_timeout_s": 2.0, **options}
    station = VendorStation("127.0.0.1", bridge.port, device_id, time_zone=SHANGHAI, **options)
    task = asyncio.create_task(station.run())
    try:
        yield station
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class RawStation:
    """A hand-driven TCP connection to the bridge: write any bytes, read the decoded replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = Mr7901Decoder()
        self.replies: list[Message] = []

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout_s: float = 10.0) -> Message:
        """The next reply from the bridge."""
        async with asyncio.timeout(timeout_s):
            while not self.replies:
                data = await self.reader.read(4096)
                if not data:
                    raise ConnectionError("the bridge closed the connection")
                self.replies += self.decoder.feed(data)
        return self.replies.pop(0)

    async def closed(self, timeout_s: float = 10.0) -> bool:
        """Whether the bridge closes the connection (reads until it does, or times out)."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    if not await self.reader.read(4096):
                        return True
                except ConnectionResetError:
                    return True


@contextlib.asynccontextmanager
async def raw_station(bridge: Bridge) -> AsyncIterator[RawStation]:
    assert bridge.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    try:
        yield RawStation(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_vendor_station_s_reads_become_its_station_s_sightings_in_utc(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    station_id = f"{topic_prefix}-v"
    dev = device(station_id, broker)
    heard_at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    async with watching(broker, station_id) as watcher, bridge_running(tmp_path, [dev]) as bridge:
        async with vendor_station(bridge, dev.device_id) as station:
            station.hear(beacon(0x5E000001, rssi_dbm=-61, antenna=2, counter=77), heard_at)
            station.hear(beacon(0x5E000001, rssi_dbm=-55, antenna=1), heard_at + timedelta(seconds=1))
            station.hear(beacon(0x5E000002, flags=TagFlags.LOW_BATTERY), heard_at)
            [*raws] = await watcher.wait("sightings")
            await eventually(lambda: station.stats.uploads_acked >= 1, what="the upload acknowledged")
        sightings = {s.tag_id: s for raw in raws for s in SightingBatch.parse(raw).sightings}
        first = sightings[format_tag(0x5E000001)]
        # The station stamped its reads in Shanghai time; the sighting says the same instant in UTC.
        assert (first.first_seen_at, first.last_seen_at) == (heard_at, heard_at + timedelta(seconds=1))
        assert (first.beacons, first.peak_rssi_dbm, first.antenna) == (2, -55, 1)
        assert sightings[format_tag(0x5E000002)].flags == TagFlags.LOW_BATTERY
        statuses = [StationStatus.parse(raw) for raw in watcher.of("status")]
        assert "online" in {s.state for s in statuses}
        link = bridge.links[dev.device_id]
        assert (link.reads, link.rejected_total) == (3, 0)


async def test_a_stolen_chip_s_first_read_goes_out_at_once_as_an_alert(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    station_id = f"{topic_prefix}-v"
    dev = device(station_id, broker)
    async with watching(broker, station_id) as watcher, bridge_running(tmp_path, [dev]) as bridge:
        [station] = bridge.fleet.stations
        # As a verified hot list leaves it (gateway/hotlist.py); the highest version, so that no list retained on the
        # shared broker by another test replaces it.
        assert station.hotlist.offer(HOTLIST_VERSION_MAX, {0x5E0000AA})
        async with vendor_station(bridge, dev.device_id) as sim:
            sim.hear(beacon(0x5E0000AA))
            [raw] = await watcher.wait("alerts")
        alert = json.loads(raw)
        assert (alert["kind"], alert["tag_id"]) == ("hotlist_hit", format_tag(0x5E0000AA))


async def test_an_unknown_device_is_refused_and_counted(broker: Broker, topic_prefix: str, tmp_path: Path) -> None:
    dev = device(f"{topic_prefix}-v", broker)
    async with bridge_running(tmp_path, [dev], {"metrics_port": free_port()}) as bridge, raw_station(bridge) as raw:
        await raw.send(encode(Register("MR-STRANGER", 1)))
        reply = await raw.reply()
        assert isinstance(reply, RegisterReply) and reply.result != 0
        assert await raw.closed()
        assert bridge.unknown_devices == {"MR-STRANGER": 1}
        async with raw_station(bridge) as again:
            await again.send(encode(Login("MR-STRANGER", 2)))
            reply = await again.reply()
            assert isinstance(reply, LoginReply) and reply.result != 0
        assert bridge.unknown_devices == {"MR-STRANGER": 2}
        # The installer sees it on the bridge's /metrics, beside its stations' figures.
        assert bridge.fleet.stations[0].settings.metrics_port is not None
        figures = await scrape_metrics(bridge.fleet.stations[0].settings.metrics_port)
        assert figures["bikeguard_gateway_vendor_unknown_devices_total", (("device", "MR-STRANGER"),)] == 2
        assert figures["bikeguard_gateway_vendor_connections_total", ()] == 2
        assert ("bikeguard_gateway_beacons_total", (("station", dev.station_id),)) in figures
        assert figures["bikeguard_gateway_spool_sync_errors_total", ()] == 0
        # The stations' background work (here the station's drain, once its uplink is up), paced by the bridge.
        await eventually(lambda: bridge.pacer.jobs > 0, what="a background job")
        figures = await scrape_metrics(bridge.fleet.stations[0].settings.metrics_port)
        assert figures["bikeguard_gateway_vendor_background_jobs_total", ()] > 0
        assert figures["bikeguard_gateway_vendor_background_waiting", ()] >= 0
        # The time the garbage collector takes from the stations, counted while the bridge runs.
        gc.collect(0)
        figures = await scrape_metrics(bridge.fleet.stations[0].settings.metrics_port)
        assert figures["bikeguard_gateway_gc_seconds_total", (("generation", "0"),)] > 0


async def test_a_bad_frame_is_counted_with_its_bytes_and_the_connection_goes_on(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    dev = device(f"{topic_prefix}-v", broker)
    async with bridge_running(tmp_path, [dev]) as bridge, raw_station(bridge) as raw:
        await raw.send(encode(Login(dev.device_id, 1)))
        assert isinstance(await raw.reply(), LoginReply)
        bad = bytearray(encode(Heartbeat(dev.device_id, 2)))
        bad[10] ^= 0x01  # a flipped bit: the CRC no longer matches
        await raw.send(bytes(bad) + encode(Heartbeat(dev.device_id, 4)))
        reply = await raw.reply()
        assert isinstance(reply, HeartbeatReply) and reply.sequence == 4
        link = bridge.links[dev.device_id]
        assert link.rejected == {"crc": 1}
        runs_file = tmp_path / f"rejected-runs-{dev.station_id}.jsonl"
        runs = await eventually(lambda: runs_file.exists() and runs_file.read_text().splitlines(), what="the run")
        assert json.loads(runs[0])["raw_hex"] == bytes(bad).hex()


async def test_a_station_that_sends_only_garbage_is_disconnected(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    dev = device(f"{topic_prefix}-v", broker)
    async with bridge_running(tmp_path, [dev], garbage_max_bytes=8192) as bridge, raw_station(bridge) as raw:
        await raw.send(encode(Login(dev.device_id, 1)))
        assert isinstance(await raw.reply(), LoginReply)
        with contextlib.suppress(ConnectionError):
            for _ in range(20):
                await raw.send(bytes(range(1, 256)) * 4)  # no sync pattern anywhere
        assert await raw.closed()
        assert bridge.garbage_disconnects == 1
        assert bridge.links[dev.device_id].rejected["garbage"] >= 1


async def test_stopping_the_bridge_with_a_station_logged_in_closes_its_connection_without_an_error(
    broker: Broker, topic_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dev = device(f"{topic_prefix}-v", broker)
    async with bridge_running(tmp_path, [dev]) as bridge:
        assert bridge.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        raw = RawStation(reader, writer)
        await raw.send(encode(Login(dev.device_id, 1)))
        assert isinstance(await raw.reply(), LoginReply)
    try:
        assert await raw.closed()
    finally:
        writer.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_heartbeats_drive_the_station_s_status(broker: Broker, topic_prefix: str, tmp_path: Path) -> None:
    station_id = f"{topic_prefix}-v"
    dev = device(station_id, broker)
    async with (
        watching(broker, station_id) as watcher,
        bridge_running(tmp_path, [dev], heartbeat_timeout_s=1.0) as bridge,
        raw_station(bridge) as raw,
    ):
        await watcher.wait("status")  # the station's first status: nobody logged in yet
        assert StationStatus.parse(watcher.of("status")[-1]).state == "offline"
        await raw.send(encode(Login(dev.device_id, 1)))
        assert isinstance(await raw.reply(), LoginReply)
        await eventually(
            lambda: StationStatus.parse(watcher.of("status")[-1]).state == "online", what="the station online"
        )
        await raw.send(encode(Heartbeat(dev.device_id, 2)))
        assert isinstance(await raw.reply(), HeartbeatReply)
        # Then silence: after the heartbeat timeout the bridge closes the connection and says offline.
        assert await raw.closed()
        await eventually(
            lambda: StationStatus.parse(watcher.of("status")[-1]).state == "offline", what="the station offline"
        )
        assert bridge.silent_disconnects == 1


def outbox_sightings(spool: Spool) -> list[Sighting]:
    """The sightings waiting in a spool's outbox, sent or not."""
    batches = [e for e in spool.peek(1000, now=time.monotonic() + 3600) if e.batch_seq is not None]
    return [s for e in batches for s in SightingBatch.parse(e.payload).sightings]


def spooled_tags(station: Station) -> set[int]:
    """The tags a station's spool holds: its open passages, and the sightings waiting in its outbox (a passage may
    have closed by the time a test looks)."""
    spool = station.spool
    if spool is None:
        return set()
    closed = {parse_tag(s.tag_id) for s in outbox_sightings(spool) if s.tag_id}
    return {p.tag for p in spool.load_passages() if isinstance(p.tag, int)} | closed


def one_read_upload(dev: VendorDevice, sequence: int, tag_id: int, read_at: datetime | None = None) -> TagUpload:
    """An upload of one read of `tag_id`, stamped `read_at` (station-local, naive) or now by the station's clock."""
    read_at = read_at or datetime.now(SHANGHAI).replace(tzinfo=None, microsecond=0)
    return TagUpload(dev.device_id, sequence, (TagRead(0, 2, tag_id, 0x4E, 1, 0, -60, read_at),))


async def log_in(raw: RawStation, dev: VendorDevice) -> None:
    """Log the raw station in as `dev`."""
    await raw.send(encode(Login(dev.device_id, 1)))
    assert isinstance(await raw.reply(), LoginReply)


async def test_an_upload_is_acknowledged_once_its_reads_are_spooled_and_a_resend_is_not_taken_twice(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    dev = device(f"{topic_prefix}-v", broker)
    upload = one_read_upload(dev, 7, 0x5E000010)
    async with bridge_running(tmp_path, [dev]) as bridge, raw_station(bridge) as raw:
        await log_in(raw, dev)
        await raw.send(encode(upload))
        reply = await raw.reply()
        assert isinstance(reply, TagUploadReply) and reply.sequence == 7
        [station] = bridge.fleet.stations
        assert station.spool is not None
        # Acknowledged means in the spool: the open passage is checkpointed there.
        assert [p.tag for p in station.spool.load_passages()] == [0x5E000010]
        await raw.send(encode(upload))  # the reply was lost, say: the station sends the same upload again
        reply = await raw.reply()
        assert isinstance(reply, TagUploadReply) and reply.sequence == 7
        link = bridge.links[dev.device_id]
        assert (link.reads, link.uploads, link.uploads_repeated) == (1, 1, 1)


async def test_an_upload_is_acknowledged_without_waiting_for_the_batch_tick_and_what_its_reads_closed_is_spooled(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    # A vendor station sends nothing more until its upload is acknowledged, so a stolen chip heard meanwhile waits on
    # that acknowledgement: the bridge gives it once the reads are checkpointed, not at the station's next batch tick
    # (here a minute away). A read that closes a passage (the same tag after the gap) has that passage's sighting
    # spooled in the same commit, so nothing acknowledged lives only in the bridge's memory.
    dev = device(f"{topic_prefix}-v", broker)
    tag = 0x5E000030
    now = datetime.now(SHANGHAI).replace(tzinfo=None, microsecond=0)
    earlier = now - timedelta(seconds=10)  # more than the gap (2 s) before
    slow_ticks = {"batch_interval_s": 60.0}
    async with bridge_running(tmp_path, [dev], stations=slow_ticks) as bridge, raw_station(bridge) as raw:
        await log_in(raw, dev)
        for sequence, read_at in ((1, earlier), (2, now)):
            await raw.send(encode(one_read_upload(dev, sequence, tag, read_at)))
            reply = await raw.reply(timeout_s=5.0)
            assert isinstance(reply, TagUploadReply) and reply.sequence == sequence
        [station] = bridge.fleet.stations
        assert station.spool is not None
        [passage] = station.spool.load_passages()
        assert passage.tag == tag and passage.first_seen_at == now.replace(tzinfo=SHANGHAI).astimezone(UTC)
        [closed] = outbox_sightings(station.spool)
        assert closed.tag_id == format_tag(tag)
        assert closed.first_seen_at == earlier.replace(tzinfo=SHANGHAI).astimezone(UTC)


async def test_a_station_that_fails_taking_an_upload_is_restarted_and_its_resend_is_taken_not_acknowledged_blind(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    # What goes wrong while a station takes an upload (here its spool's writes, failing as on a dying disk) fails
    # the station, and its supervisor restarts it. The reads it was handed may be lost with it (the open passages'
    # last reads cannot be spooled on the way down), so that upload is not acknowledged: the vendor station sends it
    # again, and the resend is taken afresh (not as a repeat of an upload already taken). Only the writes fail:
    # closing the whole spool let the uplink, reading it at its session's start, fail the station before the upload
    # came, and the upload was then taken by the restarted station at once, with nothing to resend.
    dev = device(f"{topic_prefix}-v", broker)
    tag = 0x5E000040
    async with (
        bridge_running(tmp_path, [dev], stations={"station_restart_min_s": 0.1}) as bridge,
        vendor_station(bridge, dev.device_id, reply_timeout_s=1.0) as sim,
    ):
        [station] = bridge.fleet.stations
        await eventually(lambda: sim.stats.logins >= 1 and station.uplink is not None, what="the station logged in")
        assert station.spool is not None

        def dying_disk() -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        station.spool.atomic = dying_disk  # type: ignore[method-assign]
        sim.hear(beacon(tag))
        await eventually(lambda: station.restarts >= 1, what="the station restarted")
        await eventually(lambda: sim.stats.uploads_acked >= 1, what="the upload acknowledged")
        assert sim.stats.uploads_resent >= 1
        link = bridge.links[dev.device_id]
        assert link.uploads_repeated == 0  # the resend was taken, not acknowledged as a repeat
        await eventually(lambda: tag in spooled_tags(station), what="the read in the restarted station's spool")


async def test_an_upload_is_acknowledged_only_once_its_station_s_spool_is_synced_to_disk(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    # The bridge's spools commit without an fsync each; the station forgets what is acknowledged, so the reply waits
    # for a pass of the bridge's spool sync over that station's spool.
    dev = device(f"{topic_prefix}-v", broker)
    upload = one_read_upload(dev, 9, 0x5E000020)
    gate = threading.Event()
    synced: list[Path] = []

    def slow_disk(paths: Sequence[Path]) -> set[Path]:
        gate.wait(timeout=30)
        synced.extend(paths)
        return set()

    async with bridge_running(tmp_path, [dev]) as bridge, raw_station(bridge) as raw:
        bridge.spool_sync._sync = slow_disk
        await log_in(raw, dev)
        await raw.send(encode(upload))
        [station] = bridge.fleet.stations
        assert station.spool is not None
        await eventually(lambda: station.spool and station.spool.load_passages(), what="the read checkpointed")
        with pytest.raises(TimeoutError):
            await raw.reply(timeout_s=0.5)  # committed, but not yet on disk: no reply
        assert station.spool._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        gate.set()
        reply = await raw.reply()
        assert isinstance(reply, TagUploadReply) and reply.sequence == 9
        assert station.spool.path in synced


async def test_a_dropped_connection_loses_no_read(broker: Broker, topic_prefix: str, tmp_path: Path) -> None:
    station_id = f"{topic_prefix}-v"
    dev = device(station_id, broker)
    tags = [0x5E000100 + i for i in range(60)]
    async with watching(broker, station_id) as watcher, bridge_running(tmp_path, [dev]) as bridge:
        async with vendor_station(bridge, dev.device_id) as sim:
            for i, tag in enumerate(tags):
                sim.hear(beacon(tag))
                if i % 20 == 19:
                    await asyncio.sleep(0.1)
                    for conn in list(bridge._open):
                        conn.transport.abort()  # the line drops: no goodbye on either side
            await eventually(lambda: sim.pending_reads == 0 and sim._unacked is None, what="every read acknowledged")
            seen = await eventually(
                lambda: (
                    (got := {s.tag_id for raw in watcher.of("sightings") for s in SightingBatch.parse(raw).sightings})
                    >= {format_tag(t) for t in tags}
                    and got
                ),
                what="a sighting of every tag",
            )
        assert sim.stats.connections >= 2
        assert seen == {format_tag(t) for t in tags}


def test_the_devices_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    path.write_text(
        '[[device]]\ndevice_id = "MR7901-000123"\nstation_id = "st-0042"\ntime_zone = "Asia/Shanghai"\n'
        'mqtt_url = "mqtt://st-0042:s3cret@broker.example:1883"\n'
    )
    [dev] = load_devices(path)
    assert (dev.device_id, dev.station_id, dev.time_zone) == ("MR7901-000123", "st-0042", SHANGHAI)
    for bad, message in [
        ('device_id = "MR7901-000123-TOO-LONG"', "printable ASCII"),
        ('time_zone = "Mars/Olympus"', "Mars/Olympus"),
        ('station_id = "St 42"', "invalid station id"),
        ('mqtt_url = "http://st-0042:s3cret@broker"', "mqtt_url"),
        ('colour = "red"', "unknown fields: colour"),
    ]:
        key = bad.split(" = ")[0]
        lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{key} =")]
        (tmp_path / "bad.toml").write_text("\n".join([*lines, bad]) + "\n")
        with pytest.raises(DevicesFileError, match=message) as refused:
            load_devices(tmp_path / "bad.toml")
        assert "s3cret" not in str(refused.value)  # the broker password is never echoed
    path.write_text(path.read_text() * 2)
    with pytest.raises(DevicesFileError, match="listed twice"):
        load_devices(path)


def test_a_devices_file_written_by_devices_toml_reads_back_the_same(tmp_path: Path) -> None:
    devices = [
        VendorDevice("MR7901-s01", "s01", SHANGHAI, SecretStr('mqtt://s01:a"b\\c@127.0.0.1:1883')),
        VendorDevice("MR7901-s02", "s02", ZoneInfo("Europe/Berlin"), SecretStr("mqtt://s02:p4ss@broker.example:8883")),
    ]
    path = tmp_path / "devices.toml"
    path.write_text(devices_toml(devices), encoding="utf-8")
    assert load_devices(path) == devices


def test_a_vendor_station_batches_every_three_seconds_unless_the_gateway_settings_say_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BIKEGUARD_GATEWAY_BATCH_INTERVAL_S", raising=False)
    settings = BridgeSettings(listen="127.0.0.1:0", devices_file=tmp_path / "devices.toml", spool_dir=tmp_path)
    dev = VendorDevice("MR-1", "st-v1", SHANGHAI, SecretStr("mqtt://broker:1883"))
    assert settings.station_settings(dev).batch_interval_s == BATCH_INTERVAL_S == 3.0
    assert settings.station_settings(dev, {"batch_interval_s": 0.2}).batch_interval_s == 0.2
    monkeypatch.setenv("BIKEGUARD_GATEWAY_BATCH_INTERVAL_S", "1.5")
    assert settings.station_settings(dev).batch_interval_s == 1.5


def test_each_station_gets_the_gateway_settings_of_the_environment_and_its_own_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bridge reads the environment once, for its first station, and builds the others from that one.
    monkeypatch.setenv("BIKEGUARD_GATEWAY_BATCH_INTERVAL_S", "0.5")
    settings = BridgeSettings(listen="127.0.0.1:0", devices_file=tmp_path / "devices.toml", spool_dir=tmp_path)
    devices = [
        VendorDevice(f"MR-{n}", f"st-v{n}", ZoneInfo("Asia/Shanghai"), SecretStr(f"mqtt://st-v{n}:pw{n}@broker:1883"))
        for n in range(3)
    ]
    bridge = Bridge(settings, devices, {"status_interval_s": 7.0})

    for station, device in zip(bridge.fleet.stations, devices, strict=True):
        assert station.settings == settings.station_settings(device, {"status_interval_s": 7.0})
        assert station.settings.station_id == device.station_id
        assert station.settings.batch_interval_s == 0.5
        assert station.settings.status_interval_s == 7.0
        assert station.settings.spool_path == tmp_path / f"gateway-{device.station_id}.spool"
