"""Ingest benchmark: sightings committed per second through a real broker, beside raw COPY.

Pre-builds realistic batches, publishes them from a separate process through a real broker
(Mosquitto when installed, else the embedded one), and measures how fast the backend ingest
commits them. In the same run it measures the machine's limit: a raw binary COPY of the same rows
into the same table. Last lines, one per worker count:

    ingest <engine> <kind> (<W> workers): <N> sightings/s (COPY limit <M> rows/s, ratio <R>)

Every chip is fitted to a registered bike (as in a real county), so the alarm engine's per-chip checks (cloned
chip) are part of the figure; --unregistered leaves them out.

Several workers (--workers 1 2, the default) share the traffic through the broker's shared subscription, as
BIKEGUARD_INGEST_WORKERS runs them in the backend (one in the bench's own process; several each in a process of
its own); each count gets a fresh database.

--engine chooses the storage engine of the embedded server and the bench databases (default: TimescaleDB when it is
installed into the embedded PostgreSQL, else plain PostgreSQL); every printed figure names it.

--chips-kind v1 v2 runs the same passages twice per worker count (issue 17): once from v1 chips (the tag id in
the clear) and once from v2 chips, every sighting then carrying its first and last beacons sealed with its chip's
key (protocol.beacon_v2), which the ingest resolves against all --chips registered v2 chips (default 1,000,000 when
v2 runs, else 50,000). Before each run the workers get a warm-up batch each, so a v2 worker's resolution table is
built (and its memory printed) before the clock starts; a v2 run in which any sighting does not resolve to its chip,
or resolves as a clone, fails. The last lines then add, per worker count:

    ingest v2 (<W> workers): <N> sightings/s beside v1 <M> sightings/s in the same run (ratio <R>)

Run: python bench/ingest.py [--sightings 1000000] [--batch 250] [--workers 1 2] [--broker auto|mosquitto|amqtt]
                            [--engine postgresql|timescaledb] [--unregistered] [--chips-kind v1 v2] [--chips N]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import multiprocessing as mp
import os
import pstats
import random
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import psycopg

from backend.db.migrate import migrate
from backend.db.storage import StoragePolicy
from backend.ingest.consumer import Ingest
from backend.ingest.v2 import V2Resolution
from backend.ingest.workers import IngestWorkers
from backend.ingest.writer import _SIGHTING_COLUMNS, _SIGHTING_TYPES
from backend.resolution import Verdict, join_window_splits
from backend.settings import BackendSettings
from backend.vault import Vault
from bikeguard.services import Broker, Postgres, default_engine, engine_preload, start_broker, start_postgres
from protocol import heap, topics
from protocol.beacon_v2 import ChipKey, key_check_value, window_of
from protocol.frames import TagFlags
from protocol.heap import CollectorTime
from protocol.messages import Sighting, SightingBatch, format_tag, parse_batch_rows, parse_tag
from protocol.mqtt_address import mqtt_address

# A station of its own for the warm-up batches, so the measured stations' batch_seqs start at 1 as before.
WARMUP_STATION = "st-warmup"


def register_stations(url: str, stations: int, prefix: str = "st") -> None:
    """The bench stations st-000 … (`prefix`-000 …; and the warm-up station) as registered rows: the ingest refuses
    stations it does not know."""
    rows = [(f"{prefix}-{i:03d}", f"Bench station {i}", 30.2 + i / 10_000, 120.1 + i / 10_000) for i in range(stations)]
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO stations (station_id, name, lat, lon, lifecycle) VALUES (%s, %s, %s, %s, 'active')"
            " ON CONFLICT (station_id) DO NOTHING",
            [*rows, (WARMUP_STATION, "Bench warm-up station", 30.1, 120.0)],
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


def build_batches(
    total: int,
    per_batch: int,
    stations: int,
    tags: list[int],
    seed: int = 1,
    start: datetime | None = None,
    prefix: str = "st",
) -> list[SightingBatch]:
    """Ordinary traffic: each chip passes its own station (so no chip looks cloned), at plausible times and signal
    levels; a third of the sightings felt the bike move and one in a hundred reports a low battery. The passages
    begin around `start` (default an hour ago; v2 chips' must lie in the windows the ingest's table holds)."""
    rng = random.Random(seed)
    start = start or datetime.now(UTC) - timedelta(hours=1)
    local = [tags[i::stations] for i in range(stations)]
    batches: list[SightingBatch] = []
    seq = {f"{prefix}-{i:03d}": 0 for i in range(stations)}
    made = 0
    while made < total:
        home = rng.randrange(stations)
        station = f"{prefix}-{home:03d}"
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


def bench_keys(tags: list[int], seed: int = 17) -> dict[int, bytes]:
    """A key per bench chip, the same for the same tags and seed (bench/alarm_latency.py's load publisher seals with
    the keys its main process fitted)."""
    raw = random.Random(seed).randbytes(16 * len(tags))
    return {tag: raw[16 * i : 16 * i + 16] for i, tag in enumerate(tags)}


def chip_key_rows(keys: dict[int, bytes], vault: Vault) -> list[tuple[int, bytes, bytes]]:
    """The chip_keys rows of v2 chips: each key encrypted by the vault as the counter's fitting keeps it, and its
    key check value."""
    return [(tag, vault.encrypt_chip_key(tag, key), key_check_value(key)) for tag, key in keys.items()]


def fit_v2_chips(url: str, rows: list[tuple[int, bytes, bytes]]) -> None:
    """Registered chips made v2 chips with these keys (chip_key_rows): their kind, and the keys by COPY (a million
    fittings through the counter's page would take hours). Then the tables they changed are vacuumed and analyzed,
    as autovacuum did long before a county's ordinary day: left to autovacuum, the vacuum of a million updated chips
    ran during the measured run, and its CPU counted as the ingest's."""
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE chips SET kind = 'v2' WHERE tag_id = ANY(%s)", ([tag for tag, _, _ in rows],))
        with (
            conn.cursor() as cur,
            cur.copy("COPY chip_keys (tag_id, key_ciphertext, key_check) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int8", "bytea", "bytea"])
            for row in rows:
                copy.write_row(row)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) chips, chip_keys, chip_beacon_states")


def beacon_counter(heard_at: datetime, base: float) -> int:
    """A bench chip's beacon counter at a time, read off the clock in milliseconds from `base`: every chip's counter
    moves forward with the time its beacons are heard, whichever passage, batch or worker they are in."""
    return int((heard_at.timestamp() - base) * 1000)


def _heard_times(s: Sighting) -> list[datetime]:
    """When a passage's forwarded beacons were heard: its first, and its last when it has more than one."""
    return [s.first_seen_at] if s.beacons == 1 else [s.first_seen_at, s.last_seen_at]


def as_v2(batches: list[SightingBatch], keys: dict[int, bytes], counter_base: float) -> list[SightingBatch]:
    """The same passages from v2 chips, as a v2 gateway sends them: no tag id, the first beacon and (when there is
    more than one) the last, sealed with the chip's key in the windows of their times."""
    # One ChipKey (a key schedule, ~1 KB) per chip, made once and dropped: sightings grouped by chip.
    by_tag: dict[int, list[tuple[int, int]]] = {}
    for bi, b in enumerate(batches):
        for si, s in enumerate(b.sightings):
            assert s.tag_id is not None
            by_tag.setdefault(parse_tag(s.tag_id), []).append((bi, si))
    heard: dict[tuple[int, int], list[str]] = {}
    for tag, places in by_tag.items():
        key = ChipKey(keys[tag])
        beacons = sorted(
            (t, bi, si, j) for bi, si in places for j, t in enumerate(_heard_times(batches[bi].sightings[si]))
        )
        # Two beacons of one chip in the same millisecond (two passages a few metres apart) still count up, as the
        # chip's do: an equal counter with other flags is a replay to the ingest.
        counter = -1
        for t, bi, si, _ in beacons:
            counter = max(counter + 1, beacon_counter(t, counter_base))
            flags = TagFlags(batches[bi].sightings[si].flags)
            heard.setdefault((bi, si), []).append(key.seal(window_of(t.timestamp()), counter, flags).to_bytes().hex())
    return [
        b.model_copy(
            update={
                "sightings": [
                    s.model_copy(update={"tag_id": None, "heard": heard[bi, si]}) for si, s in enumerate(b.sightings)
                ]
            }
        )
        for bi, b in enumerate(batches)
    ]


def rows_after_joins(batches: list[SightingBatch]) -> int:
    """How many rows the v2 ingest stores for these (v1) batches' passages made v2: within a batch, two passages of
    one chip at one station that a window change split are joined into one (backend.resolution.join_window_splits)."""
    stored = 0
    for b in batches:
        rows = [
            {
                "station_id": b.station_id,
                "tag_id": s.tag_id,
                "first_seen_at": s.first_seen_at,
                "last_seen_at": s.last_seen_at,
                "beacons": s.beacons,
                "peak_rssi_dbm": s.peak_rssi_dbm,
                "antenna": s.antenna,
                "flags": s.flags,
                "window": window_of((s.first_seen_at if s.beacons == 1 else s.last_seen_at).timestamp()),
            }
            for s in b.sightings
        ]
        stored += len(join_window_splits(rows))
    return stored


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
        cpu = CpuMeter({"client": [os.getpid()], "postgresql": [postmaster_pid(pg)]})
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
    """CPU seconds each part of the run used while it was measured: the ingest (this process, or its worker
    processes), PostgreSQL (the postmaster and every backend and worker it starts), the broker and the publisher.
    Polled once a second, so a short-lived process (an autovacuum worker) counts with what it had used when last seen.
    The meter runs in the bench's own process: only PostgreSQL's processes are looked for (a scan of /proc, which took
    about 3 % of the ingest's CPU when every part's were, twice a second)."""

    def __init__(self, parts: dict[str, list[int | None]]) -> None:
        self.parts = [(name, psutil.Process(pid)) for name, pids in parts.items() for pid in pids if pid is not None]
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="bench-cpu", daemon=True)

    def _sample(self, baseline: bool = False) -> None:
        for name, root in self.parts:
            try:
                family = [root, *(root.children(recursive=True) if name == "postgresql" else [])]
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
        while not self._stop.wait(1.0):
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


class Sections:
    """Wall time the ingest's writer threads spent in the parts of the v2 resolution: the bench wraps each v2
    worker's methods (a perf_counter pair per call, about 0.3 µs), as a profile by sections."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def wrap(self, owner: object, name: str, label: str) -> None:
        """Time every call of owner.name from now on under `label`."""
        inner = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                spent = time.perf_counter() - t0
                with self._lock:
                    self.seconds[label] += spent
                    self.calls[label] += 1

        setattr(owner, name, timed)

    def watch(self, ingest: IngestWorkers) -> None:
        """Time the v2 resolution of every worker in this process (its table already built by the warm-up)."""
        for w in ingest.workers:
            if not isinstance(w, Ingest):
                continue  # a worker process of its own: not timed
            v2 = w.v2
            self.wrap(v2, "resolve_sightings", "resolve_sightings (all)")
            self.wrap(v2, "_refresh", "table refresh/advance")
            self.wrap(v2, "_load_states", "eid lookups + states locked and loaded")
            self.wrap(v2, "_save_states", "states written back")
            self.wrap(v2, "_resolve", "Resolver.resolve (MAC, counter)")
            table = v2._table
            if table is not None:
                self.wrap(table, "chip_key", "ChipKey made or taken from the cache")


def profiled(v2: V2Resolution) -> cProfile.Profile:
    """A cProfile of every call of this worker's resolve_sightings (in its writer thread; the profiler's own cost
    slows it, so the run's rate is not the figure then)."""
    profile = cProfile.Profile()
    inner = v2.resolve_sightings

    def traced(*args: Any) -> Any:
        profile.enable()
        try:
            return inner(*args)
        finally:
            profile.disable()

    v2.resolve_sightings = traced
    return profile


def bench_template(server: str, args: argparse.Namespace, tags: list[int]) -> str:
    """A database migrated, with the stations and (unless --unregistered) the chips registered, that every run copies
    (CREATE DATABASE … TEMPLATE): a million chips are registered once, not once a run."""
    name = f"bench_tmpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    t = time.perf_counter()
    migrate(url, storage=StoragePolicy(args.engine))
    register_stations(url, args.stations)
    if not args.unregistered:
        register_chips(url, tags)
    with psycopg.connect(server, autocommit=True) as conn:
        # Nobody may be connected to a template while it is copied (TimescaleDB's scheduler would be).
        conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    print(f"template database: {len(tags):,} chips registered in {time.perf_counter() - t:.1f} s", flush=True)
    return url


def warm_up(
    ingest: IngestWorkers, broker: Broker, kind: str, tags: list[int], keys: dict[int, bytes], at: datetime, base: float
) -> int:
    """One-sighting batches from the warm-up station until every worker has taken one (a v2 worker builds its
    resolution table at its first v2 beacon, as a backend does once after it starts), all written before the clock
    starts; returns how many were sent."""
    client = qos1_publisher(broker.url, "bench-warmup")
    sent, deadline = 0, time.perf_counter() + 600
    try:
        while not all((f.v2_table_bytes if kind == "v2" else f.counters.messages) > 0 for f in ingest.figures()):
            if time.perf_counter() > deadline:
                raise TimeoutError("the workers did not all take a warm-up batch within 600 s")
            tag = tags[sent % len(tags)]
            seen = at + timedelta(milliseconds=sent)
            sighting = Sighting(
                tag_id=format_tag(tag),
                first_seen_at=seen,
                last_seen_at=seen,
                beacons=1,
                peak_rssi_dbm=-60,
                antenna=0,
                flags=0,
            )
            batch = SightingBatch(station_id=WARMUP_STATION, batch_seq=sent + 1, sent_at=seen, sightings=[sighting])
            if kind == "v2":
                batch = as_v2([batch], {tag: keys[tag]}, base)[0]
            client.publish(topics.station_topic(WARMUP_STATION, "sightings"), batch.to_json(), qos=1)
            sent += 1
            time.sleep(1.0)
        while ingest.counters.messages < sent:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return sent


def check_v2(ingest: IngestWorkers, warm: int, sightings: int) -> None:
    """Fail loudly unless every v2 sighting resolved to its chip: a bench whose beacons do not resolve measures
    nothing."""
    c = [f.v2_counters for f in ingest.figures()]
    resolved = sum(x.sightings_resolved for x in c) - warm
    wrong = {
        "unknown": sum(x.sightings_unknown for x in c),
        "cloned": sum(x.sightings_cloned for x in c),
        "malformed": sum(x.malformed for x in c),
        "keys unreadable": sum(x.keys_unreadable for x in c),
        **{
            f"beacons {v.value}": sum(x.beacons[v] for x in c)
            for v in (Verdict.UNKNOWN, Verdict.BAD_MAC, Verdict.REPLAY)
        },
    }
    beacons = Counter[str]()
    for x in c:
        beacons.update(x.beacons)
    print(f"  v2 resolution: {resolved:,} of {sightings:,} sightings resolved; beacons by verdict {dict(beacons)}")
    if resolved != sightings or any(wrong.values()):
        raise SystemExit(f"v2 sightings did not all resolve to their chips: {resolved:,} of {sightings:,}, {wrong}")


def measure(
    server: str,
    broker: Broker,
    workers: int,
    kind: str,
    batches: list[SightingBatch],
    args: argparse.Namespace,
    chips: tuple[str, list[int], dict[int, bytes], list[tuple[int, bytes, bytes]]],
    pg: Postgres | None,
) -> tuple[float, str]:
    """Sightings/s committed by `workers` ingest workers from a fresh copy of the template database, from `kind`
    chips; also returns that database's URL (the caller drops it)."""
    template, tags, keys, key_rows = chips
    name = f"bench_{uuid.uuid4().hex[:8]}"
    t = time.perf_counter()
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{psycopg.conninfo.conninfo_to_dict(template)["dbname"]}"')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    if kind == "v2":
        fit_v2_chips(url, key_rows)
    print(
        f"{kind} run, {workers} worker(s): database copied{' and chips made v2' * (kind == 'v2')} in"
        f" {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    base = time.time() - 3600
    expected = args.sightings
    if kind == "v2":
        t = time.perf_counter()
        expected = rows_after_joins(batches)
        batches = as_v2(batches, keys, base)
        print(f"  {len(batches)} batches sealed as v2 beacons in {time.perf_counter() - t:.1f} s", flush=True)
    payloads = [(topics.station_topic(b.station_id, "sightings"), b.to_json()) for b in batches]
    t = time.perf_counter()
    for _, payload in payloads:
        parse_batch_rows(payload)
    print(
        f"  {sum(len(p) for _, p in payloads) / len(payloads):.0f} B/message; validation alone (parse_batch_rows, this"
        f" process, one thread): {(time.perf_counter() - t) / args.sightings * 1e6:.2f} µs per sighting",
        flush=True,
    )
    settings = BackendSettings(
        environment="development",
        database_url=url,
        mqtt_url=broker.url,
        mqtt_client_id=f"bench-ingest-{name}",
        # A group per run: the previous run's persistent sessions stay in their group and would take their share.
        mqtt_shared_group=f"bench-{name}" if broker.supports_shared_subscriptions else None,
        ingest_workers=workers,
    )
    # Worker processes settle their heaps at once: the clock starts after their warm-up.
    ingest = IngestWorkers(settings, settle_heap_s=0)
    rss_before = psutil.Process().memory_info().rss
    # The backend's process settles its heap (protocol.heap); so does this one, which also takes the bench's own
    # data (the messages, the chips' keys) out of the collector's passes: a backend process has none of it.
    settled = heap.SettlingThread(0)
    while gc.isenabled():  # settled before the clock starts
        time.sleep(0.01)
    ingest.start()
    t = time.perf_counter()
    # Before every measured passage (a chip's counter moves forward with time), in the windows the table holds.
    earliest = min(s.first_seen_at for b in batches for s in b.sightings)
    warm = warm_up(ingest, broker, kind, tags, keys, earliest - timedelta(seconds=10), base)
    sections = Sections()
    profile: cProfile.Profile | None = None
    if kind == "v2":
        figures = ingest.figures()
        table, chips = [f.v2_table_bytes for f in figures], figures[0].v2_chips
        rss = sum(psutil.Process(pid).memory_info().rss for pid in ingest.pids())
        print(
            f"  warm-up: {warm} batches in {time.perf_counter() - t:.1f} s; v2 resolution tables of"
            f" {chips:,} chips: {', '.join(f'{b / 2**20:.0f} MiB' for b in table)} (per worker,"
            f" V2Resolution.table_bytes; {table[0] / chips:.0f} bytes a chip); resident memory of the ingest's"
            f" process{'es' * (workers > 1)}: {rss / 2**20:.0f} MiB"
            + (f" (+{(rss - rss_before) / 2**20:.0f} MiB since the worker started)" if workers == 1 else ""),
            flush=True,
        )
        sections.watch(ingest)
        if args.profile_v2 and isinstance(ingest.workers[0], Ingest):
            profile = profiled(ingest.workers[0].v2)
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=publisher, args=(broker.url, payloads, ready, go))
    proc.start()
    ready.wait(30)
    cpu = CpuMeter(
        {
            "ingest": list(ingest.pids()),
            "postgresql": [postmaster_pid(pg)],
            "broker": [broker.process.pid],
            "publisher": [proc.pid],
        }
    )
    load_before = os.getloadavg()[0]
    with CollectorTime() as collector:
        cpu.start()
        t0 = time.perf_counter()
        go.set()
        last_report = t0
        # Messages, not sightings: a v2 passage split by a window change is stored as one row.
        while (done := ingest.counters.messages) < warm + len(payloads):
            time.sleep(0.02)
            now = time.perf_counter()
            if now - last_report > 5:
                print(f"  {ingest.counters.sightings - warm} sightings committed after {now - t0:.0f} s", flush=True)
                last_report = now
            if now - t0 > 900:
                raise TimeoutError(f"gave up after 900 s ({done - warm} of {len(payloads)} messages written)")
        elapsed = time.perf_counter() - t0
        used = cpu.stop()
    proc.join(30)
    counters = [f.counters.sightings for f in ingest.figures()]
    ingest.stop()
    settled.close()
    with psycopg.connect(url) as conn:
        stored = conn.execute("SELECT count(*) FROM sightings WHERE station_id <> %s", (WARMUP_STATION,)).fetchone()[0]  # type: ignore[index]
    if kind == "v2":
        check_v2(ingest, warm, args.sightings)
    assert stored == expected, f"stored {stored}, expected {expected}"
    chips_text = "unregistered chips" if args.unregistered else f"{len(tags)} registered {kind} chips"
    print(
        f"{workers} worker(s) on {broker.kind}, {args.engine}; {chips_text}; {elapsed:.2f} s; all {stored} rows stored"
        f" once{f' ({args.sightings - stored} passages split by a window change joined)' * (stored != args.sightings)}"
        f" (by worker, with the warm-up: {counters})"
    )
    if kind == "v2" and sections.seconds:
        print(
            "  v2 resolution, wall time in the writer threads per sighting: "
            + ", ".join(
                f"{label} {seconds / args.sightings * 1e6:.1f} µs" for label, seconds in sections.seconds.most_common()
            )
        )
    if profile is not None:
        profile.dump_stats(args.profile_v2)
        print(f"  cProfile of the v2 resolution (its writer thread only; saved to {args.profile_v2}), by own time:")
        pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(18)
    # Per sighting, so that runs of other sizes and on busier machines compare: where the two cores went.
    print(
        "  CPU µs per sighting: "
        + ", ".join(
            f"{name} {used[name] / args.sightings * 1e6:.1f}"
            for name in ("ingest", "postgresql", "broker", "publisher")
            if name in used
        )
        + f"; {sum(used.values()) / elapsed:.2f} cores busy of {os.cpu_count()}"
        f" (load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)",
        flush=True,
    )
    print(
        (
            "  the ingest process's garbage collector: "
            if workers == 1
            else "  this process's garbage collector (the workers run in processes of their own, their heaps settled): "
        )
        + ", ".join(
            f"generation {g} {n} runs {s:.2f} s"
            for g, (n, s) in enumerate(zip(collector.collections, collector.seconds, strict=True))
        )
        + f" ({sum(collector.seconds) / args.sightings * 1e6:.1f} µs per sighting)",
        flush=True,
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
    parser.add_argument(
        "--chips-kind",
        nargs="+",
        default=["v1"],
        choices=("v1", "v2"),
        help="one run per kind and worker count, from the same passages (v2: every sighting sealed v2 beacons)",
    )
    parser.add_argument(
        "--chips", type=int, default=None, help="registered chips (default 1,000,000 with v2, else 50,000)"
    )
    parser.add_argument(
        "--profile-v2",
        type=Path,
        default=None,
        help="with one worker: cProfile the v2 resolution into this file and print its top functions (slows the run)",
    )
    args = parser.parse_args()
    if "v2" in args.chips_kind and args.unregistered:
        parser.error("v2 chips resolve only when registered: --unregistered runs v1 chips alone")

    pg = None if args.database_url else start_postgres(preload=engine_preload(args.engine))
    server = args.database_url or pg.url  # type: ignore[union-attr]
    broker = start_broker(args.broker)
    if not broker.supports_shared_subscriptions and max(args.workers) > 1:
        print(f"{broker.kind} has no shared subscriptions: one worker only", file=sys.stderr)
        args.workers = [1]
    urls: list[str] = []
    print(f"load average at the start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)
    try:
        tags = bench_tags(args.chips or (1_000_000 if "v2" in args.chips_kind else 50_000))
        urls.append(bench_template(server, args, tags))
        keys: dict[int, bytes] = {}
        key_rows: list[tuple[int, bytes, bytes]] = []
        if "v2" in args.chips_kind:
            t = time.perf_counter()
            keys = bench_keys(tags)
            key_rows = chip_key_rows(
                keys, Vault.from_settings(BackendSettings(environment="development", database_url=server))
            )
            print(f"{len(keys):,} chip keys made and encrypted by the vault in {time.perf_counter() - t:.1f} s")
        rates: dict[tuple[str, int], float] = {}
        batches: list[SightingBatch] = []
        for workers in args.workers:
            for kind in args.chips_kind:
                # Built for each run, a couple of minutes before now: a v2 beacon resolves only in the windows
                # around the ingest's clock (backend.resolution), and the same passages make each kind's run.
                t = time.perf_counter()
                batches = build_batches(
                    args.sightings, args.batch, args.stations, tags, start=datetime.now(UTC) - timedelta(minutes=2)
                )
                print(f"built {len(batches)} batches of {args.batch} in {time.perf_counter() - t:.1f} s", flush=True)
                rates[kind, workers], url = measure(
                    server, broker, workers, kind, batches, args, (urls[0], tags, keys, key_rows), pg
                )
                urls.append(url)
        limit = copy_limit(
            urls[-1], batches, BackendSettings(environment="development", database_url=server).ingest_flush_rows, pg
        )
        for (kind, workers), rate in rates.items():
            print(
                f"ingest {args.engine} {kind} ({workers} worker{'s' if workers > 1 else ''}): {rate:,.0f} sightings/s"
                f" (COPY limit {limit:,.0f} rows/s, ratio {rate / limit:.2f})"
            )
        for workers in args.workers:
            if ("v1", workers) in rates and ("v2", workers) in rates:
                v1, v2 = rates["v1", workers], rates["v2", workers]
                print(
                    f"ingest v2 ({workers} worker{'s' if workers > 1 else ''}): {v2:,.0f} sightings/s beside v1"
                    f" {v1:,.0f} sightings/s in the same run (ratio {v2 / v1:.2f}; target >= 0.90),"
                    f" {len(tags):,} registered chips"
                )
        print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
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
