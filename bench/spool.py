"""Spool benchmark: how long the default spool holds a busy station, and how fast it drains.

A busy station: 500 tags in range at all times, each beaconing every 1-3 s and staying 30-600 s
(parked, waiting at the lights or passing) before a new tag takes its place. The real aggregator
turns a simulated hour of those beacons into sightings with the default passage_gap/passage_max,
batched every batch_interval_s like the gateway does; the real spool stores them (one commit per
batch, as on a station) and the real uplink drains them into a broker that comes back after an
outage (Mosquitto when installed, else the embedded amqtt). No backend: a stand-in receives the
batches and confirms them as the ingest does (one confirmation per station per flush of
ingest_flush_interval_s), so the drain is timed until the last batch is confirmed and deleted.

Beside each figure, the machine's limit measured in the same run on the same disk and broker:
raw SQLite commits in WAL mode (synchronous=FULL) and raw paho QoS 1 publishes. Last line:

    spool: holds <H> h of a busy station (500 tags), drains <D> sightings/s (limit <L>)

Run: python bench/spool.py [--hours 1] [--tags 500] [--drain-hours 6] [--broker auto|mosquitto|amqtt]
                          [--dir DIR] [--fill]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import secrets
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from ingest import qos1_publisher  # bench/ingest.py, beside this
from pydantic import SecretStr

from bikeguard.services import Broker, free_port, start_broker
from gateway.aggregator import Aggregator
from gateway.hotlist import HotList
from gateway.settings import GatewaySettings
from gateway.spool import DEFAULT_MAX_BYTES, MIB, Spool
from gateway.uplink import Uplink
from protocol.frames import Beacon, TagFlags
from protocol.messages import CONFIRMATION_MAX_SEQS, Confirmation, Sighting, SightingBatch, StationStatus, utcnow
from protocol.topics import confirmations_topic, station_topic

STATION = "st-busy"
T0 = datetime(2025, 3, 3, 7, 0, tzinfo=UTC)


@dataclass
class Traffic:
    """What a busy station spools in the simulated time: one list of sightings per batch."""

    batches: list[list[Sighting]]
    hours: float
    beacons: int

    @property
    def sightings(self) -> int:
        """All sightings in the batches."""
        return sum(len(b) for b in self.batches)


def busy_station(
    hours: float, tags: int, dwell_s: tuple[float, float], settings: GatewaySettings, seed: int = 5
) -> Traffic:
    """Run the real aggregator over `hours` of a station with `tags` in range; warm-up not counted."""
    rng = random.Random(seed)
    agg = Aggregator(STATION, HotList(), passage_gap_s=settings.passage_gap_s, passage_max_s=settings.passage_max_s)
    warmup_s = 2 * settings.passage_max_s
    end_s = warmup_s + hours * 3600
    next_tag = 1
    # (next beacon at, tag id, interval, leaves at); a tag that leaves is replaced by a new one.
    heap: list[tuple[float, int, float, float]] = []
    for _ in range(tags):
        interval = rng.uniform(1, 3)
        heap.append((rng.uniform(0, interval), next_tag, interval, rng.uniform(0, dwell_s[1])))
        next_tag += 1
    heapq.heapify(heap)
    batches: list[list[Sighting]] = []
    beacons = 0
    tick = settings.batch_interval_s
    while tick <= end_s:
        while heap[0][0] < tick:
            at, tag, interval, leaves = heapq.heappop(heap)
            if at >= leaves:
                interval = rng.uniform(1, 3)
                heapq.heappush(heap, (at + rng.uniform(0, interval), next_tag, interval, at + rng.uniform(*dwell_s)))
                next_tag += 1
                continue
            beacon = Beacon(tag, beacons & 0xFFFF, TagFlags(0), rng.randint(-95, -45), rng.randint(0, 1))
            agg.add(beacon, T0 + timedelta(seconds=at))
            if tick > warmup_s:
                beacons += 1
            jitter = rng.uniform(-0.1, 0.1) * interval
            heapq.heappush(heap, (at + interval + jitter, tag, interval, leaves))
        closed = agg.close_due(T0 + timedelta(seconds=tick))
        if tick > warmup_s and closed:
            for start in range(0, len(closed), settings.batch_max):
                batches.append(closed[start : start + settings.batch_max])
        tick += settings.batch_interval_s
    return Traffic(batches, hours, beacons)


def payload(seq: int, sightings: list[Sighting]) -> bytes:
    """The batch exactly as the station builds it."""
    return SightingBatch(station_id=STATION, batch_seq=seq, sent_at=T0, sightings=sightings).to_json()


def builder(sightings: list[Sighting]) -> Callable[[int], bytes]:
    """What the station hands Spool.put_sightings: the payload built once the batch_seq is known."""
    return lambda seq: payload(seq, sightings)


def prebuilt(data: bytes) -> Callable[[int], bytes]:
    """A builder returning a payload made earlier (for filling, not for measuring)."""
    return lambda seq: data


def spool_writes(path: Path, traffic: Traffic) -> tuple[float, Spool]:
    """Put every batch into a real spool, one commit each, building the payload inside like the station."""
    spool = Spool(path, max_bytes=DEFAULT_MAX_BYTES)
    topic = station_topic(STATION, "sightings")
    t = time.perf_counter()
    for sightings in traffic.batches:
        spool.put_sightings(topic, builder(sightings), len(sightings))
    return time.perf_counter() - t, spool


def sqlite_limits(path: Path, payloads: list[bytes], window: int) -> tuple[float, float]:
    """Raw SQLite on the same disk, WAL + synchronous=FULL: inserts/s (a commit each), deletes/s (`window` a commit)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    t = time.perf_counter()
    for p in payloads:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (payload) VALUES (?)", (p,))
        db.execute("COMMIT")
    inserts = len(payloads) / (time.perf_counter() - t)
    t = time.perf_counter()
    while rows := db.execute("SELECT id, payload FROM t ORDER BY id LIMIT ?", (window,)).fetchall():
        db.execute("BEGIN IMMEDIATE")
        db.executemany("DELETE FROM t WHERE id = ?", ((r[0],) for r in rows))
        db.execute("COMMIT")
    deletes = len(payloads) / (time.perf_counter() - t)
    db.close()
    return inserts, deletes


def paho_limit(url: str, topic: str, payloads: list[bytes]) -> float:
    """Raw paho QoS 1 publishes/s of the same payloads to the same broker (1000 in flight)."""
    client = qos1_publisher(url, "bench-raw")
    try:
        t = time.perf_counter()
        infos = [client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(60)
        return len(payloads) / (time.perf_counter() - t)
    finally:
        client.disconnect()
        client.loop_stop()


def fill(path: Path, traffic: Traffic, payloads: list[bytes]) -> None:
    """Fill a spool to the default bound (this hour's batches over and over), then time puts that must drop."""
    spool = Spool(path, max_bytes=DEFAULT_MAX_BYTES, drop_log_interval_s=3600)
    topic = station_topic(STATION, "sightings")
    t = time.perf_counter()
    i = 0
    while spool.dropped == 0:
        with spool.atomic():  # a thousand a commit: filling is not what is measured
            for _ in range(1000):
                n = i % len(payloads)
                spool.put_sightings(topic, prebuilt(payloads[n]), len(traffic.batches[n]))
                i += 1
    filled_s = time.perf_counter() - t
    db_bytes, wal_bytes = path.stat().st_size, Path(f"{path}-wal").stat().st_size
    t = time.perf_counter()
    dropping = 2000
    for j in range(dropping):
        n = (i + j) % len(payloads)
        spool.put_sightings(topic, prebuilt(payloads[n]), len(traffic.batches[n]))
    rate = dropping / (time.perf_counter() - t)
    print(
        f"filled to the bound: {spool.depth:,} batches, {spool.size_bytes / MIB:.0f} MiB of payload"
        f" in {filled_s:.0f} s;"
        f" database file {db_bytes / MIB:.0f} MiB, WAL {wal_bytes / MIB:.1f} MiB;"
        f" full, each put drops the oldest: {rate:,.0f} batches/s"
    )
    spool.close()
    path.unlink()
    Path(f"{path}-wal").unlink(missing_ok=True)
    Path(f"{path}-shm").unlink(missing_ok=True)


@dataclass
class Drain:
    """How the uplink emptied the spool once the broker was back."""

    reconnect_s: float
    drain_s: float
    messages: int
    sightings: int
    resent: int


class Confirmer:
    """The backend's part in a drain: receive the station's batches, confirm them once per flush interval."""

    def __init__(self, broker: Broker, flush_interval_s: float = 0.05) -> None:
        self.flush_interval_s = flush_interval_s
        self.received = 0
        self._seqs: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-confirmer-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.username_pw_set(broker.username, broker.password)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(station_topic(STATION, "sightings"), qos=1)
        if not self._subscribed.wait(10):
            raise RuntimeError("the confirmer's subscription was not acknowledged")
        self._thread = threading.Thread(target=self._flushes, name="confirmer", daemon=True)
        self._thread.start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        seq = orjson.loads(msg.payload)["batch_seq"]
        with self._lock:
            self._seqs.append(seq)
            self.received += 1

    def _flushes(self) -> None:
        while not self._stop.wait(self.flush_interval_s):  # the ingest's flush interval, as it gathers
            with self._lock:
                seqs, self._seqs = self._seqs, []
            for i in range(0, len(seqs), CONFIRMATION_MAX_SEQS):
                message = Confirmation(
                    station_id=STATION, batch_seqs=seqs[i : i + CONFIRMATION_MAX_SEQS], sent_at=utcnow()
                )
                self.client.publish(confirmations_topic(STATION), message.to_json(), qos=1)

    def stop(self) -> None:
        """Stop confirming and disconnect."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()


async def drain(spool: Spool, settings: GatewaySettings, outage_s: float, kind: str) -> tuple[Drain, Broker]:
    """Run the real uplink against a broker that is down for `outage_s`, then up; time the drain until the last
    batch is confirmed."""
    uplink = Uplink(settings, spool, HotList(), lambda: StationStatus(station_id=STATION, state="online"))
    task = asyncio.create_task(uplink.run())
    await asyncio.sleep(outage_s)  # failed connection attempts, backing off
    _, port, user, password = settings.mqtt_address
    broker = await asyncio.to_thread(lambda: start_broker(kind, port, username=user or "", password=password))
    back = time.perf_counter()
    # Subscribed before the uplink's next attempt, usually: a batch published before would reach nobody and be
    # resent only after confirm_timeout_s (counted in `resent`).
    confirmer = await asyncio.to_thread(Confirmer, broker)
    try:
        while not uplink.connected:
            await asyncio.sleep(0.005)
        connected = time.perf_counter()
        while spool.depth:
            await asyncio.sleep(0.005)
        done = time.perf_counter()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(confirmer.stop)
    result = Drain(
        connected - back, done - connected, uplink.batches_confirmed, uplink.sightings_confirmed, uplink.batches_resent
    )
    return result, broker


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=1.0, help="simulated traffic to spool and drain")
    parser.add_argument("--tags", type=int, default=500, help="tags in range at any time")
    parser.add_argument("--dwell-s", type=float, nargs=2, default=(30.0, 600.0), metavar=("MIN", "MAX"))
    parser.add_argument("--broker", default="auto", choices=("auto", "mosquitto", "amqtt"))
    parser.add_argument("--drain-hours", type=float, default=6.0, help="backlog of traffic drained after the outage")
    parser.add_argument("--outage-s", type=float, default=3.0, help="how long the broker is away before the drain")
    parser.add_argument("--dir", type=Path, default=None, help="where the spool files go (the station's disk)")
    parser.add_argument("--fill", action="store_true", help="also fill a spool to the default bound (writes ~600 MB)")
    args = parser.parse_args()

    port = free_port()
    settings = GatewaySettings(
        station_id=STATION,
        serial_url="/dev/null",
        mqtt_url=SecretStr(f"mqtt://bench:{secrets.token_urlsafe(12)}@127.0.0.1:{port}"),
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir))
    try:
        t = time.perf_counter()
        traffic = busy_station(args.hours, args.tags, tuple(args.dwell_s), settings)
        per_hour = traffic.sightings / traffic.hours
        print(
            f"busy station: {args.tags} tags in range, dwell {args.dwell_s[0]:.0f}-{args.dwell_s[1]:.0f} s,"
            f" gap {settings.passage_gap_s:.0f} s, max {settings.passage_max_s:.0f} s:"
            f" {traffic.beacons / (traffic.hours * 3600):,.0f} beacons/s -> {per_hour / 3600:.1f} sightings/s"
            f" in {len(traffic.batches) / (traffic.hours * 3600):.2f} batches/s"
            f" (simulated {traffic.hours:g} h in {time.perf_counter() - t:.1f} s)"
        )

        payloads = [payload(i, s) for i, s in enumerate(traffic.batches)]
        seconds, spool = spool_writes(workdir / "station.spool", traffic)
        payload_bytes = spool.size_bytes
        db_bytes, wal_bytes = (workdir / "station.spool").stat().st_size, (workdir / "station.spool-wal").stat().st_size
        bytes_per_hour = payload_bytes / traffic.hours
        hours = DEFAULT_MAX_BYTES / bytes_per_hour
        print(
            f"payload: {payload_bytes / len(traffic.batches):,.0f} B/batch, {payload_bytes / traffic.sightings:.0f}"
            f" B/sighting, {bytes_per_hour / MIB:.1f} MiB/h; database file {db_bytes / payload_bytes:.2f} x payload,"
            f" WAL {wal_bytes / MIB:.1f} MiB"
        )
        raw_inserts, raw_deletes = sqlite_limits(workdir / "raw.sqlite", payloads, settings.inflight_max)
        batches_s = len(traffic.batches) / seconds
        print(
            f"spool writes: {batches_s:,.0f} batches/s, {traffic.sightings / seconds:,.0f} sightings/s"
            f" (raw SQLite limit {raw_inserts:,.0f} commits/s; a busy station needs"
            f" {len(traffic.batches) / (traffic.hours * 3600):.2f})"
        )
        on_disk = DEFAULT_MAX_BYTES * db_bytes / payload_bytes + wal_bytes
        print(
            f"default bound {DEFAULT_MAX_BYTES / MIB:.0f} MiB of payload (~{on_disk / MIB:.0f} MiB on disk)"
            f" = {hours:.0f} h ({hours / 24:.1f} days) of this station"
        )
        if args.fill:
            fill(workdir / "full.spool", traffic, payloads)

        # A longer backlog than the simulated hour for a steadier drain figure: the same sightings again, each copy
        # in batches with their own batch_seq (the backend confirms a batch by its seq).
        copies = max(1, round(args.drain_hours / traffic.hours))
        topic = station_topic(STATION, "sightings")
        for _ in range(copies - 1):
            with spool.atomic():
                for sightings in traffic.batches:
                    spool.put_sightings(topic, builder(sightings), len(sightings))
        result, broker = asyncio.run(drain(spool, settings, args.outage_s, args.broker))
        try:
            assert result.sightings == copies * traffic.sightings, (result.sightings, copies * traffic.sightings)
            rate = result.sightings / result.drain_s
            raw_mqtt = max(
                paho_limit(broker.url, station_topic(STATION, "sightings"), payloads) for _ in range(3)
            )  # best of 3: it is a limit
        finally:
            broker.stop()
            spool.close()
        per_msg = traffic.sightings / len(traffic.batches)
        limit = min(raw_mqtt, raw_deletes) * per_msg
        print(
            f"drain with confirmation ({broker.kind}, {settings.inflight_max} in flight): reconnected"
            f" {result.reconnect_s:.1f} s after the broker came back, then {result.messages:,} messages confirmed in"
            f" {result.drain_s:.2f} s = {result.messages / result.drain_s:,.0f} messages/s, {rate:,.0f} sightings/s"
            f" ({rate / (per_hour / 3600):,.0f} x real time; {result.resent} resent)"
        )
        print(
            f"limits: raw paho QoS 1 {raw_mqtt:,.0f} messages/s (best of 3),"
            f" raw SQLite delete {raw_deletes:,.0f} messages/s"
            f" ({settings.inflight_max} a commit) = {limit:,.0f} sightings/s at {per_msg:.1f} sightings/message"
        )
        full_drain_s = DEFAULT_MAX_BYTES / bytes_per_hour * per_hour / rate
        print(f"a full default spool ({hours:.0f} h of traffic) drains in about {full_drain_s / 60:.1f} min")
        print(
            f"spool: holds {hours:.0f} h of a busy station ({args.tags} tags),"
            f" drains {rate:,.0f} sightings/s (limit {limit:,.0f})"
        )
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
