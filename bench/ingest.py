"""Ingest benchmark: sightings committed per second through a real broker, beside raw COPY.

Pre-builds realistic batches, publishes them from a separate process through a real broker
(Mosquitto when installed, else the embedded one), and measures how fast the backend ingest
commits them. In the same run it measures the machine's limit: a raw binary COPY of the same rows
into the same table. Last lines, one per worker count:

    ingest (<W> workers): <N> sightings/s (COPY limit <M> rows/s, ratio <R>)

Every chip is fitted to a registered bike (as in a real county), so the alarm engine's per-chip checks (cloned
chip) are part of the figure; --unregistered leaves them out.

Several workers (--workers 1 2, the default) share the traffic through the broker's shared subscription, as
BIKEGUARD_INGEST_WORKERS runs them in the backend; each count gets a fresh database.

--engine chooses the storage engine of the embedded server and the bench databases (default: TimescaleDB when it is
installed into the embedded PostgreSQL, else plain PostgreSQL); every printed figure names it.

Run: python bench/ingest.py [--sightings 1000000] [--batch 250] [--workers 1 2] [--broker auto|mosquitto|amqtt]
                            [--engine postgresql|timescaledb] [--unregistered]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import psycopg

from backend.db.migrate import migrate
from backend.db.storage import StoragePolicy
from backend.ingest.workers import IngestWorkers
from backend.ingest.writer import _SIGHTING_COLUMNS, _SIGHTING_TYPES
from backend.settings import BackendSettings
from bikeguard.services import Broker, Postgres, default_engine, engine_preload, start_broker, start_postgres
from protocol import topics
from protocol.messages import Sighting, SightingBatch, format_tag, parse_tag
from protocol.mqtt_address import mqtt_address


def register_stations(url: str, stations: int) -> None:
    """The bench stations st-000 … as registered rows: the ingest refuses stations it does not know."""
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO stations (station_id, name, lat, lon, lifecycle) VALUES (%s, %s, %s, %s, 'active')"
            " ON CONFLICT (station_id) DO NOTHING",
            [(f"st-{i:03d}", f"Bench station {i}", 30.2 + i / 10_000, 120.1 + i / 10_000) for i in range(stations)],
        )


def bench_tags(count: int = 50_000, seed: int = 1) -> list[int]:
    """The chips of the bench's town."""
    rng = random.Random(seed)
    return list({rng.randrange(1, 2**32): None for _ in range(count)})


def register_chips(url: str, tags: list[int]) -> None:
    """Every bench chip fitted to a registered bike of its own owner, as in a real county: the alarm engine looks
    at each registered chip it sees."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO owners (name, id_number_hash, id_number_enc, mobile, address)"
            " SELECT 'Bench owner ' || i, sha256(('id' || i)::bytea), sha256(('enc' || i)::bytea),"
            "  '138' || lpad(i::text, 8, '0'), 'Bench street' FROM generate_series(1, %s) i",
            (len(tags),),
        )
        conn.execute(
            "INSERT INTO bikes (plate, owner_id, frame_number, motor_number)"
            " SELECT 'BENCH-' || owner_id, owner_id, 'FR' || owner_id, 'MT' || owner_id FROM owners"
            " WHERE name LIKE 'Bench owner %%'"
        )
        conn.execute(
            "INSERT INTO chips (tag_id, bike_id) SELECT t.tag_id, b.bike_id"
            " FROM unnest(%s::int8[]) WITH ORDINALITY AS t(tag_id, n)"
            " JOIN (SELECT bike_id, row_number() OVER (ORDER BY bike_id) AS n FROM bikes"
            "       WHERE plate LIKE 'BENCH-%%') b USING (n)",
            (tags,),
        )


def build_batches(total: int, per_batch: int, stations: int, tags: list[int], seed: int = 1) -> list[SightingBatch]:
    """Ordinary traffic: each chip passes its own station (so no chip looks cloned), at plausible times and signal
    levels; a third of the sightings felt the bike move and one in a hundred reports a low battery."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=1)
    local = [tags[i::stations] for i in range(stations)]
    batches: list[SightingBatch] = []
    seq = {f"st-{i:03d}": 0 for i in range(stations)}
    made = 0
    while made < total:
        home = rng.randrange(stations)
        station = f"st-{home:03d}"
        seq[station] += 1
        n = min(per_batch, total - made)
        at = start + timedelta(seconds=made / 20_000)
        sightings = []
        for _ in range(n):
            first = at - timedelta(seconds=rng.uniform(5, 60))
            flags = (4 if rng.random() < 0.33 else 0) | (1 if rng.random() < 0.01 else 0)
            sightings.append(
                Sighting(
                    tag_id=format_tag(rng.choice(local[home])),
                    first_seen_at=first,
                    last_seen_at=first + timedelta(seconds=rng.uniform(0, 20)),
                    beacons=rng.randint(1, 12),
                    peak_rssi_dbm=rng.randint(-95, -40),
                    antenna=rng.randint(0, 1),
                    flags=flags,
                )
            )
        batches.append(SightingBatch(station_id=station, batch_seq=seq[station], sent_at=at, sightings=sightings))
        made += n
    return batches


def qos1_publisher(url: str, name: str) -> mqtt.Client:
    """A paho client connected to the broker at url, its network loop running, up to 1000 QoS 1 publishes in flight
    and no queue limit: the benchmarks' publishing side."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    host, port, user, password = mqtt_address(url)
    client.username_pw_set(user, password)
    client.connect(host, port)
    client.loop_start()
    return client


def publisher(url: str, payloads: list[tuple[str, bytes]], ready: mp.Event, go: mp.Event) -> None:
    """A separate process: publish every payload with QoS 1 as fast as the broker takes them."""
    client = qos1_publisher(url, "bench-pub")
    ready.set()
    go.wait()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def copy_limit(url: str, batches: list[SightingBatch], chunk: int, pg: Postgres | None) -> float:
    """Rows/s of a plain binary COPY of the same rows into the same table, in chunks like the ingest; prints the CPU
    it used per row."""
    rows = [
        (
            s.first_seen_at,
            s.last_seen_at,
            b.station_id,
            parse_tag(s.tag_id),
            s.beacons,
            s.peak_rssi_dbm,
            s.antenna,
            s.flags,
            b.batch_seq,
        )
        for b in batches
        for s in b.sightings
    ]
    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE sightings")
        conn.commit()
        cpu = CpuMeter({"client": os.getpid(), "postgresql": postmaster_pid(pg)})
        cpu.start()
        t0 = time.perf_counter()
        for i in range(0, len(rows), chunk):
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY sightings ({_SIGHTING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types(_SIGHTING_TYPES)
                for row in rows[i : i + chunk]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t0
        used = cpu.stop()
    print(
        f"COPY limit: {len(rows)} rows in {elapsed:.2f} s; CPU µs per row: "
        + ", ".join(f"{name} {seconds / len(rows) * 1e6:.1f}" for name, seconds in used.items())
    )
    return len(rows) / elapsed


class CpuMeter:
    """CPU seconds each part of the run used while it was measured: the ingest (this process), PostgreSQL (the
    postmaster and every backend and worker it starts), the broker and the publisher. Polled twice a second, so a
    short-lived process (an autovacuum worker) counts with what it had used when last seen."""

    def __init__(self, parts: dict[str, int | None]) -> None:
        self.parts = {name: psutil.Process(pid) for name, pid in parts.items() if pid is not None}
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="bench-cpu", daemon=True)

    def _sample(self, baseline: bool = False) -> None:
        for name, root in self.parts.items():
            try:
                family = [root, *(root.children(recursive=True) if name != "ingest" else [])]
            except psutil.NoSuchProcess:
                continue
            for proc in family:
                try:
                    t = proc.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                used = t.user + t.system
                # A process started during the run counts from zero.
                self._first.setdefault(proc.pid, used if baseline else 0.0)
                self._last[proc.pid] = (name, used)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._sample()

    def start(self) -> None:
        """Take the first sample and keep sampling."""
        self._sample(baseline=True)
        self._thread.start()

    def stop(self) -> Counter[str]:
        """Take the last sample; CPU seconds used by each part since start()."""
        self._stop.set()
        self._thread.join()
        self._sample()
        used: Counter[str] = Counter()
        for pid, (name, last) in self._last.items():
            used[name] += last - self._first.get(pid, 0.0)
        return used


def postmaster_pid(pg: Postgres | None) -> int | None:
    """The embedded server's postmaster (None for a server of --database-url: its CPU is not ours to see)."""
    if pg is None:
        return None
    return int((Path(pg.data_dir) / "postmaster.pid").read_text().split()[0])


def measure(
    server: str,
    broker: Broker,
    workers: int,
    batches: list[SightingBatch],
    payloads: list[tuple[str, bytes]],
    args: argparse.Namespace,
    tags: list[int],
    pg: Postgres | None,
) -> tuple[float, str]:
    """Sightings/s committed by `workers` ingest workers from a fresh database; also returns that database's URL
    (the caller drops it)."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    migrate(url, storage=StoragePolicy(args.engine))
    register_stations(url, args.stations)
    if not args.unregistered:
        register_chips(url, tags)
    settings = BackendSettings(
        environment="development",
        database_url=url,
        mqtt_url=broker.url,
        mqtt_client_id=f"bench-ingest-{name}",
        # A group per run: the previous run's persistent sessions stay in their group and would take their share.
        mqtt_shared_group=f"bench-{name}" if broker.supports_shared_subscriptions else None,
        ingest_workers=workers,
    )
    ingest = IngestWorkers(settings)
    ingest.start()
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=publisher, args=(broker.url, payloads, ready, go))
    proc.start()
    ready.wait(30)
    cpu = CpuMeter(
        {"ingest": os.getpid(), "postgresql": postmaster_pid(pg), "broker": broker.process.pid, "publisher": proc.pid}
    )
    load_before = os.getloadavg()[0]
    cpu.start()
    t0 = time.perf_counter()
    go.set()
    last_report = t0
    while (done := ingest.counters.sightings) < args.sightings:
        time.sleep(0.02)
        now = time.perf_counter()
        if now - last_report > 5:
            print(f"  {done} sightings committed after {now - t0:.0f} s", flush=True)
            last_report = now
        if now - t0 > 600:
            raise TimeoutError("gave up after 600 s")
    elapsed = time.perf_counter() - t0
    used = cpu.stop()
    proc.join(30)
    counters = [w.counters.sightings for w in ingest.workers]
    ingest.stop()
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]  # type: ignore[index]
    assert stored == args.sightings, f"stored {stored}, expected {args.sightings}"
    chips = "unregistered chips" if args.unregistered else f"{len(tags)} registered chips"
    print(
        f"{workers} worker(s) on {broker.kind}, {args.engine}; {chips}; {elapsed:.2f} s; all {stored} stored once"
        f" (by worker: {counters})"
    )
    # Per sighting, so that runs of other sizes and on busier machines compare: where the two cores went.
    print(
        "  CPU µs per sighting: "
        + ", ".join(
            f"{name} {used[name] / args.sightings * 1e6:.1f}"
            for name in ("ingest", "postgresql", "broker", "publisher")
            if name in used
        )
        + f"; {sum(used.values()) / elapsed:.2f} cores busy of {os.cpu_count()}"
        f" (load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )
    return args.sightings / elapsed, url


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sightings", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=250, help="sightings per MQTT message")
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="ingest workers, one run per count")
    parser.add_argument("--broker", default="auto", choices=("auto", "mosquitto", "amqtt"))
    parser.add_argument("--database-url", default=None, help="a server to use instead of an embedded one")
    parser.add_argument(
        "--engine",
        default=default_engine(),
        choices=("postgresql", "timescaledb"),
        help="storage engine of the sightings (default: TimescaleDB when installed into the embedded PostgreSQL)",
    )
    parser.add_argument(
        "--unregistered", action="store_true", help="leave the chips unregistered (skips the per-chip alarm checks)"
    )
    args = parser.parse_args()

    pg = None if args.database_url else start_postgres(preload=engine_preload(args.engine))
    server = args.database_url or pg.url  # type: ignore[union-attr]
    broker = start_broker(args.broker)
    if not broker.supports_shared_subscriptions and max(args.workers) > 1:
        print(f"{broker.kind} has no shared subscriptions: one worker only", file=sys.stderr)
        args.workers = [1]
    urls: list[str] = []
    try:
        tags = bench_tags()
        t = time.perf_counter()
        batches = build_batches(args.sightings, args.batch, args.stations, tags)
        payloads = [(topics.station_topic(b.station_id, "sightings"), b.to_json()) for b in batches]
        print(
            f"built {len(batches)} batches of {args.batch} ({args.sightings} sightings, "
            f"{sum(len(p) for _, p in payloads) / len(payloads):.0f} B/message) in {time.perf_counter() - t:.1f} s"
        )
        rates = {}
        for workers in args.workers:
            rates[workers], url = measure(server, broker, workers, batches, payloads, args, tags, pg)
            urls.append(url)
        limit = copy_limit(
            urls[-1], batches, BackendSettings(environment="development", database_url=server).ingest_flush_rows, pg
        )
        for workers, rate in rates.items():
            print(
                f"ingest {args.engine} ({workers} worker{'s' if workers > 1 else ''}): {rate:,.0f} sightings/s"
                f" (COPY limit {limit:,.0f} rows/s, ratio {rate / limit:.2f})"
            )
        return 0
    finally:
        broker.stop()
        with psycopg.connect(server, autocommit=True) as conn:
            for url in urls:
                name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if pg:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
