"""A whole station hearing v2 chips through a simulated radio module on a pty, against a real broker: a stolen chip
flagged at its first beacon with the uplink down, the signed hot list's eids, passages kept over a crash, and no key
or tag id of a v2 chip anywhere in the station's files or logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bikeguard.services import Broker, free_port
from firmware_sim.radio import RadioModule
from firmware_sim.tag_v2 import TagBeaconV2, TagV2
from gateway.spool import Spool
from gateway.station import Station
from protocol.beacon_v2 import WINDOW_S, window_of
from protocol.messages import Alert, Hotlist, Sighting, SightingBatch, format_tag, utcnow
from protocol.signing import generate_signing_key, public_key_of, read_signing_key, sign_hotlist
from protocol.topics import HOTLIST
from tests.gateway.harness import TcpHop, eventually, fast_settings, mqtt_client, running, watching

pytestmark = pytest.mark.anyio

SERIAL = 0x7E5A11C3  # the chip's tag id in the registry: the station never learns it


@pytest.fixture
def radio() -> Iterator[RadioModule]:
    """A simulated radio module on a pty, pacing its frames at line speed from a thread of its own."""
    with RadioModule(status_interval_s=None) as module:
        module.start()
        yield module


def chip(key: bytes, serial: int = SERIAL) -> TagV2:
    """A v2 chip fitted now, its clock set to the middle of the current window: a test's beacons all fall in one
    window (a window change would rightly split its passage in two)."""
    now = time.time()
    middle = window_of(now) * WINDOW_S + WINDOW_S / 2
    return TagV2(serial, key, random.Random(serial), epoch_unix_s=now, clock_offset_s=middle - now)


def next_beacon(tag: TagV2) -> TagBeaconV2:
    """The chip's next beacon, sent now (however long the test waited since the one before)."""
    now_s = time.time() - tag.epoch_unix_s
    tag.next_beacon_at_s = now_s
    [sent] = tag.poll(now_s)
    return sent


def eids_ahead(tag: TagV2) -> dict[int, list[bytes]]:
    """What the backend's hot list carries for a stolen v2 chip: its eids for its window, the one before and the one
    after. (The test holds the chip; the backend derives them from the key it keeps at rest.)"""
    window = tag.window(time.time() - tag.epoch_unix_s)
    return {w: [tag.chip_key.eid(w)] for w in range(window - 1, window + 2)}


def air_hex(sent: TagBeaconV2) -> str:
    """The beacon's bytes as a sighting or alert carries them."""
    return sent.air.to_bytes().hex()


async def test_a_stolen_v2_chip_is_flagged_at_its_first_beacon_while_the_uplink_is_down(
    broker: Broker, radio: RadioModule, topic_prefix: str, tmp_path: Path, hop: TcpHop
) -> None:
    tag = chip(secrets.token_bytes(16))
    spool_path = tmp_path / "s.spool"
    # The list the station took before its uplink went down, saved in its spool.
    seed = Spool(spool_path)
    seed.save_hotlist(11, [], eids_ahead(tag))
    seed.close()
    settings = fast_settings(topic_prefix, radio.port, hop.url, spool_path, passage_gap_s=1.0)
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
        assert station.uplink is not None and station.spool is not None
        first = next_beacon(tag)
        radio.hear(first.frame(rssi_dbm=-58, antenna=1))
        await eventually(lambda: station.spool is not None and station.spool.depth == 1, what="the alert spooled")
        [entry] = station.spool.peek(10)
        alert = Alert.parse(entry.payload)
        assert (alert.kind, alert.tag_id, alert.heard, alert.hotlist_version) == (
            "hotlist_hit",
            None,
            air_hex(first),
            11,
        )
        assert (alert.rssi_dbm, alert.antenna) == (-58, 1)
        assert station.aggregator.open_count == 1  # at the first beacon, not when the passage closes
        assert not station.uplink.connected and watcher.messages == []

        last = next_beacon(tag)
        radio.hear(last.frame(rssi_dbm=-66, antenna=0))
        await eventually(lambda: station.status().spool_depth == 2, what="the passage closed into a batch")

        await hop.open()

        await watcher.wait("sightings")
        delivered = [(k, p) for k, p in watcher.messages if k != "status"]
        assert [k for k, _ in delivered] == ["alerts", "sightings"]
        assert Alert.parse(delivered[0][1]) == alert
        [sighting] = SightingBatch.parse(delivered[1][1]).sightings
        assert (sighting.tag_id, sighting.heard, sighting.beacons) == (None, [air_hex(first), air_hex(last)], 2)
        assert station.figures().counters["beacons_v2"] == 2


async def test_a_signed_list_with_eids_is_taken_and_a_forged_one_refused_and_the_good_one_flags_the_chip(
    broker: Broker, radio: RadioModule, topic_prefix: str, tmp_path: Path
) -> None:
    stolen, innocent = chip(secrets.token_bytes(16)), chip(secrets.token_bytes(16), serial=SERIAL + 1)
    version = time.time_ns() // 1_000_000  # newer than any list another test left retained on this broker
    key = generate_signing_key()
    settings = fast_settings(
        topic_prefix,
        radio.port,
        broker.url,
        tmp_path / "s.spool",
        passage_gap_s=10,
        hotlist_public_key=public_key_of(key),
    )
    eids = {str(w): [e.hex() for e in es] for w, es in eids_ahead(stolen).items()}
    good = sign_hotlist(Hotlist(version=version, issued_at=utcnow(), tags=[], eids=eids), read_signing_key(key))
    # The same signature over the innocent chip's eids, and a newer version: what a forger on the broker would send.
    forged_eids = {str(w): [e.hex() for e in es] for w, es in eids_ahead(innocent).items()}
    forged = good.model_copy(update={"version": version + 1, "eids": forged_eids})
    async with mqtt_client(broker) as backend:
        await backend.publish(HOTLIST, good.to_json(), qos=1, retain=True)
        try:
            async with watching(broker, topic_prefix) as watcher, running(Station(settings)) as station:
                assert station.uplink is not None and station.spool is not None
                await eventually(lambda: station.hotlist.version == version, what="the signed list")
                assert station.spool.load_hotlist_eids() == {
                    int(w): [bytes.fromhex(e) for e in es] for w, es in eids.items()
                }

                await backend.publish(HOTLIST, forged.to_json(), qos=1, retain=True)
                await eventually(
                    lambda: station.uplink is not None and station.uplink.hotlist_rejected["bad_signature"]
                )
                assert station.hotlist.version == version
                assert station.figures().gauges["hotlist_eids"] == station.hotlist.eid_count >= 2

                radio.hear(next_beacon(innocent).frame(rssi_dbm=-70, antenna=0))
                first = next_beacon(stolen)
                radio.hear(first.frame(rssi_dbm=-61, antenna=1))
                [raw] = await watcher.wait("alerts")
                alert = Alert.parse(raw)
                assert (alert.kind, alert.heard, alert.hotlist_version) == ("hotlist_hit", air_hex(first), version)
                await eventually(lambda: station.status().beacons_total == 2)
                await asyncio.sleep(0.3)  # time enough for a wrong alert of the innocent chip to show
                assert len(watcher.of("alerts")) == 1
        finally:
            await backend.publish(HOTLIST, b"", qos=1, retain=True)


def checkpoint_v2(spool_path: Path) -> dict[bytes, int]:
    """The open v2 passages checkpointed in a spool file, as another process reads it: eid -> beacons."""
    with contextlib.closing(sqlite3.connect(spool_path)) as db:
        return dict(db.execute("SELECT eid, beacons FROM open_passages_v2").fetchall())


async def test_a_v2_passage_open_at_a_crash_comes_back_from_the_checkpoint_and_is_reported_once(
    broker: Broker, radio: RadioModule, topic_prefix: str, tmp_path: Path
) -> None:
    tag = chip(secrets.token_bytes(16))
    spool_path, crashed = tmp_path / "s.spool", tmp_path / "crashed.spool"
    nobody = f"mqtt://127.0.0.1:{free_port()}"
    settings = fast_settings(topic_prefix, radio.port, nobody, spool_path, passage_gap_s=30, passage_checkpoint_s=0.2)
    async with running(Station(settings)) as station:
        first, last = next_beacon(tag), next_beacon(tag)
        radio.hear(first.frame(rssi_dbm=-80, antenna=0))
        await eventually(lambda: checkpoint_v2(spool_path) == {first.air.eid: 1}, what="a new passage checkpointed")
        radio.hear(last.frame(rssi_dbm=-60, antenna=1))
        await eventually(lambda: checkpoint_v2(spool_path) == {first.air.eid: 2}, what="the checkpoint refreshed")
        # What a SIGKILL or a power cut leaves: the file's committed state.
        with contextlib.closing(sqlite3.connect(spool_path)) as src, contextlib.closing(sqlite3.connect(crashed)) as to:
            src.backup(to)
        assert station.spool is not None and station.spool.depth == 0

    restarted = fast_settings(topic_prefix, radio.port, broker.url, crashed, passage_gap_s=0.3)
    async with watching(broker, topic_prefix) as watcher, running(Station(restarted)) as station:
        assert station.aggregator.open_count == 1

        def received() -> list[Sighting]:
            return [s for p in watcher.of("sightings") for s in SightingBatch.parse(p).sightings]

        await eventually(lambda: received(), what="the restored passage received")
        await eventually(lambda: station.aggregator.open_count == 0 and station.status().spool_depth == 0)
        await asyncio.sleep(0.5)  # time enough for a duplicate to show
        [sighting] = received()

    assert (sighting.heard, sighting.beacons) == ([air_hex(first), air_hex(last)], 2)
    assert (sighting.peak_rssi_dbm, sighting.antenna) == (-60, 1)
    assert checkpoint_v2(crashed) == {}


async def test_the_stations_files_and_logs_hold_no_chip_key_and_no_tag_id_of_a_v2_chip(
    radio: RadioModule, topic_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = secrets.token_bytes(16)
    tag = chip(key)
    files = tmp_path / "station"
    spool_path = files / "s.spool"
    seed = Spool(spool_path)
    seed.save_hotlist(12, [], eids_ahead(tag))
    seed.close()
    nobody = f"mqtt://127.0.0.1:{free_port()}"
    settings = fast_settings(
        topic_prefix,
        radio.port,
        nobody,
        spool_path,
        passage_gap_s=30,
        passage_checkpoint_s=0.1,
        rejected_runs_path=files / "rejected.jsonl",
    )
    with caplog.at_level(logging.DEBUG):
        async with running(Station(settings)) as station:
            sent = [next_beacon(tag) for _ in range(3)]
            tag.tampered = True
            sent.append(next_beacon(tag))
            for beacon in sent:
                radio.hear(beacon.frame(rssi_dbm=-65, antenna=0))
            radio.send_raw(b"\x00garbage\xff")  # a rejected run, written to the rejected-runs file
            # The stolen-chip and tamper alerts spooled, the open passage checkpointed.
            await eventually(lambda: station.status().spool_depth == 2 and checkpoint_v2(spool_path), what="alerts")
        # Stopped: the open passage went to the spool as a sighting.

    stored = b"".join(p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file())
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    # The search reads what the station wrote: the beacons heard are there.
    assert air_hex(sent[0]).encode() in stored and sent[0].air.eid in stored
    [batch] = [SightingBatch.parse(e.payload) for e in Spool(spool_path).peek(10) if e.batch_seq is not None]
    assert batch.sightings[0].heard == [air_hex(sent[0]), air_hex(sent[-1])]
    assert "hotlist_hit" in logged
    for secret in (key, key.hex().encode(), key.hex().upper().encode()):
        assert secret not in stored
        assert secret.decode(errors="replace") not in logged
    for tag_id in (format_tag(SERIAL), format_tag(SERIAL).lower()):
        assert tag_id.encode() not in stored
        assert tag_id not in logged
