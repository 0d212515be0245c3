"""A whole station against a real broker and a pty: what the backend receives, and when."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bikeguard.services import Broker, free_port
from gateway.mqtt import SocketWatch
from gateway.settings import GatewaySettings
from gateway.spool import Spool
from gateway.station import Station
from protocol.frames import ModuleStatus, TagFlags, encode
from protocol.messages import Alert, Hotlist, Sighting, SightingBatch, StationStatus, format_tag, utcnow
from protocol.signing import generate_signing_key, public_key_of, read_signing_key, sign_hotlist
from protocol.topics import HOTLIST, station_topic
from tests.gateway.harness import (
    FakeModule,
    TcpHop,
    beacon,
    eventually,
    fast_settings,
    mqtt_client,
    retained,
    running,
    watching,
)

pytestmark = pytest.mark.anyio


async def test_beacons_of_one_tag_become_one_sighting_and_status_is_online(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    settings = fast_settings(topic_prefix, module.path, broker.url, tmp_path / "s.spool", passage_gap_s=0.3)
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
        module.send(ModuleStatus(noise_floor_dbm=-104, firmware=1, uptime_s=5))
        for rssi, antenna, flags in [(-80, 0, TagFlags.MOTION), (-55, 1, 0), (-70, 0, TagFlags.LOW_BATTERY)]:
            module.send(beacon(0x1234ABCD, rssi_dbm=rssi, antenna=antenna, flags=flags))
            await asyncio.sleep(0.05)

        [raw] = await watcher.wait("sightings")
        batch = SightingBatch.parse(raw)
        assert batch.station_id == topic_prefix
        [sighting] = batch.sightings
        assert sighting.tag_id == "1234ABCD"
        assert sighting.beacons == 3
        assert (sighting.peak_rssi_dbm, sighting.antenna) == (-55, 1)
        assert sighting.flags == TagFlags.MOTION | TagFlags.LOW_BATTERY
        assert sighting.first_seen_at < sighting.last_seen_at

        status = StationStatus.parse(await retained(broker, station_topic(topic_prefix, "status")))
        assert status.state == "online"
        assert status.firmware == settings.firmware
        await eventually(lambda: station.status().sightings_published == 1)
        now = station.status()
        assert (now.beacons_total, now.noise_floor_dbm) == (3, -104)
        assert (now.spool_depth, now.frames_rejected) == (0, 0)


async def test_a_stations_status_comes_at_least_every_interval_at_a_drifting_phase(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    # Stations of one process started together (a vendor bridge's thousand) must not publish their statuses in the
    # same moment every interval: each wait is a random 0-20 % shorter than status_interval_s, never longer.
    interval = 0.2
    settings = fast_settings(topic_prefix, module.path, broker.url, tmp_path / "s.spool", status_interval_s=interval)
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)):
        statuses = await watcher.wait("status", count=13)
    sent = [StationStatus.parse(raw).sent_at.timestamp() for raw in statuses[1:13]]
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert all(0.8 * interval - 0.02 <= gap <= interval + 0.1 for gap in gaps), gaps
    assert max(gaps) - min(gaps) > 0.005, gaps  # 11 waits drawn from 40 ms of spread are not all alike


async def test_hot_listed_tag_alerts_at_its_first_beacon_long_before_the_passage_closes(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    stolen = 0x00C0FFEE
    version = time.time_ns() // 1_000_000  # newer than any list another test left retained on this broker
    key = generate_signing_key()
    settings = fast_settings(
        topic_prefix,
        module.path,
        broker.url,
        tmp_path / "s.spool",
        passage_gap_s=10,
        hotlist_public_key=public_key_of(key),
    )
    async with mqtt_client(broker) as backend:
        unsigned = Hotlist(version=version, issued_at=utcnow(), tags=[format_tag(stolen)])
        hotlist = sign_hotlist(unsigned, read_signing_key(key))
        await backend.publish(HOTLIST, hotlist.to_json(), qos=1, retain=True)
        try:
            async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
                await eventually(lambda: station.hotlist.version == version, what="the hot list")
                module.send(beacon(stolen, rssi_dbm=-60, antenna=1))

                [raw] = await watcher.wait("alerts")
                alert = Alert.parse(raw)
                assert (alert.kind, alert.tag_id) == ("hotlist_hit", "00C0FFEE")
                assert alert.hotlist_version == version
                assert (alert.rssi_dbm, alert.antenna, alert.station_id) == (-60, 1, topic_prefix)
                # How fast is bench/alarm_latency.py's business; here: at the first beacon, not at the
                # passage's end.
                assert station.aggregator.open_count == 1  # the passage is still open
                assert watcher.of("sightings") == []
                assert station.spool is not None
                assert station.spool.load_hotlist() == (version, [stolen])
        finally:
            await backend.publish(HOTLIST, b"", qos=1, retain=True)


async def test_a_batch_whose_puback_never_comes_goes_again_on_a_new_connection_after_the_publish_timeout(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, hop: TcpHop
) -> None:
    await hop.open()
    settings = fast_settings(topic_prefix, module.path, hop.url, tmp_path / "s.spool", publish_timeout_s=1)
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
        await eventually(lambda: station.uplink is not None and station.uplink.connected, what="connected")
        await hop.freeze()  # the broker hangs: the connection stays open, and no PUBACK comes back
        frozen_at = time.monotonic()
        module.send(beacon(0x0BADCAFE))

        [raw] = await watcher.wait("sightings")
        assert time.monotonic() - frozen_at >= settings.publish_timeout_s
        [sighting] = SightingBatch.parse(raw).sightings
        assert sighting.tag_id == "0BADCAFE"
        assert station.uplink is not None and station.uplink.connects == 2
        # The new connection took the session over from the hung one: the backend's confirmation reaches it.
        await eventually(lambda: station.status().spool_depth == 0, what="the batch confirmed and deleted")
        assert station.uplink.batches_confirmed == 1


async def test_batch_seq_increases_and_survives_a_restart(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    spool = tmp_path / "s.spool"
    settings = fast_settings(topic_prefix, module.path, broker.url, spool, passage_gap_s=0.2)
    async with watching(broker, topic_prefix) as watcher:
        async with running(Station(settings)):
            module.send(beacon(1))
            await watcher.wait("sightings", 1)
            module.send(beacon(2))
            await watcher.wait("sightings", 2)
        async with running(Station(settings)):
            module.send(beacon(3))
            # A batch whose confirmation had not come before the stop is sent again after the restart (QoS 1): the
            # same batch under the same seq, which the backend stores once.
            n = 3
            batches = [SightingBatch.parse(p) for p in await watcher.wait("sightings", n)]
            while all(b.sightings[0].tag_id != "00000003" for b in batches):
                n += 1
                batches = [SightingBatch.parse(p) for p in await watcher.wait("sightings", n)]

    sent = list(dict.fromkeys((b.batch_seq, b.sightings[0].tag_id) for b in batches))
    first = sent[0][0]
    assert sent == [(first, "00000001"), (first + 1, "00000002"), (first + 2, "00000003")]


async def test_a_lost_spool_never_reuses_a_batch_seq(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    settings = fast_settings(topic_prefix, module.path, broker.url, tmp_path / "a.spool", passage_gap_s=0.2)
    replaced = fast_settings(topic_prefix, module.path, broker.url, tmp_path / "new.spool", passage_gap_s=0.2)
    async with watching(broker, topic_prefix) as watcher:
        async with running(Station(settings)):
            for tag in (1, 2, 3):
                module.send(beacon(tag))
                await watcher.wait("sightings", tag)
        async with running(Station(replaced)):  # the old spool file is gone: a new one starts
            module.send(beacon(4))
            batches = [SightingBatch.parse(p) for p in await watcher.wait("sightings", 4)]

    assert batches[3].batch_seq > batches[2].batch_seq


async def test_messages_spooled_while_the_broker_is_unreachable_arrive_later_in_order_alerts_first(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, hop: TcpHop
) -> None:
    stolen = 0xBADB1CE
    spool_path = tmp_path / "s.spool"
    # A hot list from an earlier run: the station flags the stolen chip without any broker.
    seed = Spool(spool_path)
    seed.save_hotlist(1, [stolen])
    seed.close()
    settings = fast_settings(topic_prefix, module.path, hop.url, spool_path, passage_gap_s=0.2)
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
        module.send(beacon(1))
        await eventually(lambda: station.status().spool_depth == 1, what="a spooled batch")
        module.send(beacon(2))
        await eventually(lambda: station.status().spool_depth == 2, what="a second batch")
        module.send(beacon(stolen, flags=TagFlags.TAMPER))
        await eventually(lambda: station.status().spool_depth == 5, what="two alerts and a third batch")
        assert watcher.messages == []
        assert station.uplink is not None and not station.uplink.connected

        await hop.open()

        await watcher.wait("sightings", 3)
        delivered = [(k, p) for k, p in watcher.messages if k != "status"]
        kinds = [k for k, _ in delivered]
        assert kinds == ["alerts", "alerts", sightings := "sightings", sightings, sightings]
        assert [Alert.parse(p).kind for k, p in delivered if k == "alerts"] == ["hotlist_hit", "tamper"]
        batches = [SightingBatch.parse(p) for k, p in delivered if k == "sightings"]
        assert [b.batch_seq for b in batches] == [0, 1, 2]
        assert [b.sightings[0].tag_id for b in batches] == ["00000001", "00000002", format_tag(stolen)]
        await eventually(lambda: station.status().spool_depth == 0, what="an empty spool")


async def test_last_will_says_offline_when_the_connection_dies_uncleanly(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, hop: TcpHop
) -> None:
    status_topic = station_topic(topic_prefix, "status")
    settings = fast_settings(topic_prefix, module.path, hop.url, tmp_path / "s.spool")
    await hop.open()
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
        await watcher.wait("status")
        assert StationStatus.parse(await retained(broker, status_topic)).state == "online"

        await hop.cut()  # no DISCONNECT reaches the broker

        [_, will] = await watcher.wait("status", 2)
        assert StationStatus.parse(will).state == "offline"
        assert StationStatus.parse(await retained(broker, status_topic)).state == "offline"

        await hop.open()
        await watcher.wait("status", 3)
        assert StationStatus.parse(await retained(broker, status_topic)).state == "online"
        assert station.uplink is not None and station.uplink.connects == 2

    # A clean shutdown says offline itself.
    final = StationStatus.parse(await retained(broker, status_topic))
    assert final.state == "offline" and final.sent_at is not None


async def connect_then_stop(settings: GatewaySettings, meanwhile: Callable[[], Awaitable[Any]]) -> asyncio.Task[None]:
    """Run a station until it is connected, await `meanwhile()`, tell it to stop; its task, at most 10 s later."""
    station = Station(settings)
    task = asyncio.create_task(station.run())
    await eventually(lambda: station.uplink is not None and station.uplink.connected, what="connected")
    await meanwhile()
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    return task


async def test_a_station_told_to_stop_just_as_its_connection_drops_stops(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, hop: TcpHop
) -> None:
    # A race (it used to be lost about one time in 25): the failed session must not swallow the stop.
    for attempt in range(24):
        settings = fast_settings(topic_prefix, module.path, hop.url, tmp_path / f"{attempt}.spool")
        await hop.open()

        async def cut(delay_s: float = attempt % 3 / 1000) -> None:
            await hop.cut()
            await asyncio.sleep(delay_s)

        task = await connect_then_stop(settings, cut)
        assert task.cancelled(), f"attempt {attempt}: still running"


async def test_a_busy_station_told_to_stop_stops(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    # A status every 2 ms keeps PUBACKs arriving: a stop that lands just as one does used to be dropped
    # (about one time in 20), and the gateway went on running.
    for attempt in range(30):
        settings = fast_settings(
            topic_prefix, module.path, broker.url, tmp_path / f"{attempt}.spool", status_interval_s=0.002
        )
        task = await connect_then_stop(settings, lambda a=attempt: asyncio.sleep(0.05 + a % 7 * 0.003))
        assert task.done(), f"attempt {attempt}: still running"


async def test_a_socket_closed_before_the_loop_watches_it_is_no_error_and_other_errors_still_are() -> None:
    # The race behind "Exception in callback …add_writer(…)" when a connection drops: paho asks, from the thread
    # that connects it, for its socket to be watched for writing, and the socket is closed before the loop gets
    # to it. An open socket asked for the same way is watched.
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    ours, theirs = socket.socketpair()
    writable = asyncio.Event()
    watch = SocketWatch(loop, read=lambda: None, write=writable.set)
    try:
        ours.close()
        await asyncio.to_thread(watch.want_write, ours)
        loop.call_soon(operator.truediv, 1, 0)
        await asyncio.sleep(0.05)
        await asyncio.to_thread(watch.want_write, theirs)
        async with asyncio.timeout(5):
            await writable.wait()
    finally:
        watch.closed(theirs)
        loop.set_exception_handler(before)
        theirs.close()
    assert [type(c.get("exception")) for c in reported] == [ZeroDivisionError]


async def test_a_station_told_to_stop_while_its_broker_hangs_stops(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, hop: TcpHop
) -> None:
    # The link stays open but nothing comes back: the goodbye (offline status) gets its 2 s, then the station
    # stops; it used to stall now and then inside a publish under load.
    for attempt in range(3):
        settings = fast_settings(
            topic_prefix, module.path, hop.url, tmp_path / f"{attempt}.spool", status_interval_s=0.01
        )
        await hop.open()

        async def hang(delay_s: float = 0.05 + attempt * 0.2) -> None:
            await hop.freeze()
            await asyncio.sleep(delay_s)

        task = await connect_then_stop(settings, hang)
        assert task.cancelled(), f"attempt {attempt}: still running"
        await hop.cut()


async def test_garbage_on_the_serial_line_is_counted_and_the_frames_around_it_become_sightings(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    settings = fast_settings(topic_prefix, module.path, broker.url, tmp_path / "s.spool", passage_gap_s=0.3)
    truncated = encode(beacon(0x77))[:7]
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
        module.send_raw(
            b"\x00\xffnoise"
            + encode(beacon(0x55, rssi_dbm=-60))
            + truncated
            + encode(beacon(0x55, rssi_dbm=-50))
            + b"\xaa\x55\xff"
            + encode(beacon(0x66))
        )
        [raw] = await watcher.wait("sightings")
        sightings = {s.tag_id: s for s in SightingBatch.parse(raw).sightings}

        assert set(sightings) == {"00000055", "00000066"}
        assert sightings["00000055"].beacons == 2
        assert sightings["00000055"].peak_rssi_dbm == -50
        assert station.radio is not None
        assert station.radio.rejected_total >= 3
        assert station.status().frames_rejected == station.radio.rejected_total


async def test_shutdown_spools_open_passages_for_the_next_connection(
    module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    nobody = f"mqtt://127.0.0.1:{free_port()}"
    settings = fast_settings(topic_prefix, module.path, nobody, tmp_path / "s.spool", passage_gap_s=30)
    async with running(Station(settings)) as station:
        module.send(beacon(0x42), beacon(0x43))
        await eventually(lambda: station.status().beacons_total == 2)
        await asyncio.sleep(0.3)  # a few failed connection attempts; the station keeps going
        assert station.status().spool_depth == 0

    spool = Spool(tmp_path / "s.spool")
    [entry] = spool.peek(10)
    batch = SightingBatch.parse(entry.payload)
    assert entry.topic == station_topic(topic_prefix, "sightings")
    assert sorted(s.tag_id for s in batch.sightings) == ["00000042", "00000043"]


def checkpoint(spool_path: Path) -> dict[int, int]:
    """The open passages checkpointed in a spool file, as another process reads it: tag id -> beacons."""
    with contextlib.closing(sqlite3.connect(spool_path)) as db:
        return dict(db.execute("SELECT tag_id, beacons FROM open_passages").fetchall())


async def test_passages_open_at_a_crash_come_back_from_the_checkpoint_and_are_reported_once(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    spool_path, crashed = tmp_path / "s.spool", tmp_path / "crashed.spool"
    nobody = f"mqtt://127.0.0.1:{free_port()}"
    settings = fast_settings(topic_prefix, module.path, nobody, spool_path, passage_gap_s=30, passage_checkpoint_s=0.2)
    async with running(Station(settings)) as station:
        module.send(beacon(1, rssi_dbm=-80), beacon(2))
        await eventually(lambda: checkpoint(spool_path) == {1: 1, 2: 1}, what="new passages checkpointed")
        module.send(beacon(1, rssi_dbm=-60, antenna=1))
        await eventually(lambda: checkpoint(spool_path) == {1: 2, 2: 1}, what="the checkpoint refreshed")
        # What a SIGKILL or a power cut leaves: the file's committed state.
        with contextlib.closing(sqlite3.connect(spool_path)) as src, contextlib.closing(sqlite3.connect(crashed)) as to:
            src.backup(to)
        assert station.spool is not None and station.spool.depth == 0

    restarted = fast_settings(topic_prefix, module.path, broker.url, crashed, passage_gap_s=0.3)
    async with watching(broker, topic_prefix) as watcher, running(Station(restarted)) as station:
        assert station.aggregator.open_count == 2
        module.send(beacon(3))

        def received() -> list[Sighting]:
            return [s for p in watcher.of("sightings") for s in SightingBatch.parse(p).sightings]

        # Wait on what the subscriber received: the station's spool may be empty (every batch confirmed)
        # before the new beacon was read, if the restored passages close first.
        await eventually(
            lambda: {s.tag_id for s in received()} == {"00000001", "00000002", "00000003"},
            what="restored and new passages received",
        )
        await eventually(lambda: station.aggregator.open_count == 0 and station.status().spool_depth == 0)
        await asyncio.sleep(0.5)  # time enough for a duplicate to show
        sightings = received()

    assert sorted(s.tag_id for s in sightings) == ["00000001", "00000002", "00000003"]
    one = next(s for s in sightings if s.tag_id == "00000001")
    assert (one.beacons, one.peak_rssi_dbm, one.antenna) == (2, -60, 1)
    assert checkpoint(crashed) == {}


async def test_drops_are_counted_in_the_retained_status_across_restarts(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    spool_path = tmp_path / "s.spool"
    full = Spool(spool_path, max_bytes=100)
    for _ in range(3):
        full.put_sightings("elsewhere", lambda seq: b"x" * 60, 5)
    full.ack(e.id for e in full.peek(10))
    full.close()

    settings = fast_settings(topic_prefix, module.path, broker.url, spool_path)
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)):
        [raw] = await watcher.wait("status")

    status = StationStatus.parse(raw)
    assert (status.state, status.spool_dropped, status.spool_depth) == ("online", 10, 0)


async def test_a_backlog_many_windows_long_drains_in_order_with_new_messages_spooled_meanwhile(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    spool_path = tmp_path / "s.spool"
    seed = Spool(spool_path)
    sightings_topic = station_topic(topic_prefix, "sightings")
    for tag in range(1, 201):
        sighting = Sighting(
            tag_id=format_tag(tag),
            first_seen_at=utcnow(),
            last_seen_at=utcnow(),
            beacons=1,
            peak_rssi_dbm=-70,
            antenna=0,
            flags=0,
        )

        def build(seq: int, s: Sighting = sighting) -> bytes:
            return SightingBatch(station_id=topic_prefix, batch_seq=seq, sent_at=utcnow(), sightings=[s]).to_json()

        seed.put_sightings(sightings_topic, build, 1)
    seed.close()

    settings = fast_settings(topic_prefix, module.path, broker.url, spool_path, inflight_max=8)
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
        module.send(beacon(0xBAD, flags=TagFlags.TAMPER))  # an alert spooled while the backlog drains
        batches = [SightingBatch.parse(p) for p in await watcher.wait("sightings", 201, timeout_s=20)]
        await eventually(lambda: station.status().spool_depth == 0, what="an empty spool")

    assert [b.batch_seq for b in batches[:200]] == list(range(200))
    assert batches[200].sightings[0].tag_id == format_tag(0xBAD)
    [alert] = watcher.of("alerts")
    assert Alert.parse(alert).kind == "tamper"
