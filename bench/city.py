"""A megacity day: 1,000,000 chips and 10,000 stations through the real broker into the real backend.

No ptys at that scale: a separate process generates the day's sightings and publishes them as the JSON
SightingBatch messages stations publish, through the real broker (Mosquitto when installed) to the real backend
(`bikeguard backend` as a subprocess, so its memory is its own), which commits them to PostgreSQL or TimescaleDB.

The day (assumptions, all in the simulated day's own clock, UTC; the day replayed is yesterday's):
- every chip is fitted to a registered bike (as in bench/ingest.py), so the alarm engine's per-chip checks run;
- a bike rides 0, 1, 2, 3 or 4 trips with probabilities 25, 10, 40, 10 and 15 % (1.8 trips a day on average);
- a trip starts at an hour drawn from a commuter profile (HOUR_WEIGHTS: peaks 08:00-09:00 and 18:00-19:00, each
  about 11 % of the day's trips) and passes 3 to 8 stations (5.5 on average) along its way, one every 1 to 4
  minutes, lingering 5-40 s in range of each; a bike's trips start at its home station at least 45 minutes
  apart (so no chip looks cloned);
- so the full day is about 1.8 x 5.5 = 9.9 sightings per chip, 9.9 million sightings for 1,000,000 chips, about
  300 sightings/s in a peak hour;
- each station's gateway sends what closed in the last second (its default batch_interval_s of 1 s), so at this
  density a batch carries one or two sightings: a megacity's MQTT message rate is close to its sighting rate.
`--scale` keeps that fraction of the bikes' traffic (a random sample of the bikes, each with all its trips, so one
chip's rows per day are as in the full city; all chips and stations stay registered); `--speed` replays the day that
many times faster than real time, keeping each batch's simulated times: the generator publishes a batch when the
replay clock reaches its sent_at. scale x speed is the load carried as a multiple of the full city's real-time load
(the defaults, 0.02 x 96: 1.92 times a full city's traffic, the day in 15 minutes).

Measured:
- ingest throughput at the peak: sightings committed per wall second in the busiest 10 s, and over the busiest
  simulated hour;
- end-to-end lag: from the moment the replay clock reaches a batch's sent_at (the gateway sends it) to its commit
  in the database (the commit's own timestamp: the server runs with track_commit_timestamp = on, and each batch's
  row in ingested_batches carries its transaction's commit time); per sighting, p50/p99/max. The gateway's own
  hold time (a sighting closes, then waits up to 1 s for its batch) comes on top of it in a real city; the
  generator's lateness (how far behind the replay clock it published) is printed beside it, since a late
  generator is counted in the lag;
- backend (process tree) and broker resident memory, sampled once per simulated hour;
- the database size of the day: the day's chunk before and after compress_chunk on TimescaleDB, and the same
  rows in a plain PostgreSQL daily partition (a second database on the same server, filled by one COPY);
- the machine's limit in the same run: a raw binary COPY of the same rows (a sample of the peak hour) into a
  fresh `sightings` of the same engine, in transactions of the ingest's flush size (bench/ingest.py's copy_limit).

Run: python bench/city.py [--engine postgresql|timescaledb] [--chips 1000000] [--stations 10000] [--scale 0.02]
                          [--speed 96] [--gateway-batch-s 1] [--workers 1] [--broker auto|mosquitto|amqtt]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import psycopg
from ingest import (  # bench/ingest.py, beside this
    bench_tags,
    copy_limit,
    qos1_publisher,
    register_chips,
    register_stations,
)

from backend.db.migrate import migrate
from backend.db.storage import StoragePolicy
from backend.settings import BackendSettings
from bikeguard.demo import wait_for_http
from bikeguard.services import (
    Broker,
    Postgres,
    default_engine,
    engine_preload,
    free_port,
    start_broker,
    start_postgres,
    stop_process,
)
from protocol import topics
from protocol.messages import Sighting, SightingBatch, format_tag

DAY_S = 86_400
TRIPS_PER_BIKE = (0.25, 0.10, 0.40, 0.10, 0.15)  # P(0 trips) ... P(4 trips)
# Relative trip starts per hour of the day: a commuter city, morning and evening peaks.
HOUR_WEIGHTS = (
    0.3, 0.2, 0.15, 0.15, 0.3, 1.0, 3.0, 8.0, 11.0, 6.0, 4.0, 4.0,
    4.5, 4.0, 4.0, 4.5, 6.0, 9.0, 11.0, 7.0, 4.5, 3.0, 1.8, 0.8,
)  # fmt: skip
STATIONS_PER_TRIP = (3, 8)
STEP_S = (60.0, 240.0)  # between two stations of a trip
DWELL_S = (5.0, 40.0)  # in range of one station
TRIP_GAP_S = 2700.0  # a trip lasts at most 8 stops x 240 s + 60 s; the next starts no sooner
GATEWAY_BATCH_S = 1.0  # gateway.settings batch_interval_s
GATEWAY_BATCH_MAX = 500  # gateway.settings batch_max
# Sightings the generator lets travel unstored before it waits, as a gateway's publish window does: well under
# Mosquitto's queue per subscriber (max_queued_messages 100,000, beyond which it drops) and paho's 65,535 message ids.
BACKLOG_MAX = 20_000
SIGHTING_COLUMNS = "first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna, flags, batch_seq"


@dataclass(frozen=True)
class DayPlan:
    """The day's sightings as columns, sorted by the batch they travel in (its send time, then its station)."""

    station: np.ndarray  # station index
    tag: np.ndarray  # index into the chip list
    first_s: np.ndarray  # seconds after the day's start
    last_s: np.ndarray
    sent_s: np.ndarray  # the send time of the batch it travels in
    rssi: np.ndarray
    antenna: np.ndarray
    flags: np.ndarray
    full_day: int  # sightings the whole day would have at scale 1 (the expectation)

    def batch_bounds(self) -> Iterator[tuple[int, int]]:
        """(start, end) of each batch: one station's sightings sent at the same time, at most batch_max."""
        key = np.round(self.sent_s * 1000).astype(np.int64) * 1_000_000 + self.station
        cuts = np.flatnonzero(np.diff(key)) + 1
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [len(key)]))
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            for s in range(start, end, GATEWAY_BATCH_MAX):
                yield s, min(end, s + GATEWAY_BATCH_MAX)


def apart(rider: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Trip starts moved so that a bike's next trip starts TRIP_GAP_S after its previous one (rider is sorted)."""
    start = start.copy()
    order = np.lexsort((start, rider))
    s, r = start[order], rider[order]
    same = np.concatenate(([False], r[1:] == r[:-1]))
    for _ in range(len(TRIPS_PER_BIKE) - 2):  # a bike's chain of trips is at most 4 long: 3 passes settle it
        s = np.where(same, np.maximum(s, np.concatenate(([0.0], s[:-1])) + TRIP_GAP_S), s)
    start[order] = s
    return start


def plan_day(chips: int, stations: int, scale: float, batch_s: float = GATEWAY_BATCH_S, seed: int = 7) -> DayPlan:
    """The day's trips (a `scale` sample of them) unrolled into sightings at stations, as described above."""
    rng = np.random.default_rng(seed)
    trips = rng.choice(len(TRIPS_PER_BIKE), size=chips, p=TRIPS_PER_BIKE)
    mean_stops = sum(STATIONS_PER_TRIP) / 2
    full_day = round(chips * float(np.dot(np.arange(len(TRIPS_PER_BIKE)), TRIPS_PER_BIKE)) * mean_stops)
    trips[rng.random(chips) >= scale] = 0  # the sample: a fraction of the bikes, each with all its trips
    rider = np.repeat(np.arange(chips), trips)
    n = len(rider)
    weights = np.array(HOUR_WEIGHTS) / sum(HOUR_WEIGHTS)
    start = rng.choice(24, size=n, p=weights) * 3600.0 + rng.uniform(0, 3600, n)
    start = apart(rider, start)
    stops = rng.integers(STATIONS_PER_TRIP[0], STATIONS_PER_TRIP[1] + 1, n)
    stride = rng.integers(1, 6, n)  # stations along a trip are neighbours on the bench's line of stations
    # Every trip of a bike starts at its home station: trips far apart would make the chip look cloned.
    home = rng.integers(0, stations - STATIONS_PER_TRIP[1] * 5, chips)[rider]
    step = rng.uniform(*STEP_S, n)
    trip = np.repeat(np.arange(n), stops)
    j = np.arange(len(trip)) - np.repeat(np.cumsum(stops) - stops, stops)
    first = start[trip] + j * step[trip] + rng.uniform(0, 20, len(trip))
    last = first + rng.uniform(*DWELL_S, len(trip))
    sent = np.ceil(last / batch_s) * batch_s
    inside = sent < DAY_S  # trips running past midnight belong to the next day
    station = (home[trip] + j * stride[trip])[inside]
    order = np.lexsort((station, sent[inside]))
    m = int(inside.sum())
    flags = np.where(rng.random(m) < 0.01, 5, 4)  # moving; one in a hundred with a low battery
    return DayPlan(
        station=station[order],
        tag=rider[trip][inside][order],
        first_s=first[inside][order],
        last_s=last[inside][order],
        sent_s=sent[inside][order],
        rssi=rng.integers(-95, -39, m),
        antenna=rng.integers(0, 2, m),
        flags=flags,
        full_day=full_day,
    )


def station_id(index: int) -> str:
    """The bench's station ids, as bench/ingest.py's register_stations makes them."""
    return f"st-{index:03d}"


def batch_of(plan: DayPlan, start: int, end: int, day0: datetime, tags: list[int], seq: int) -> SightingBatch:
    """The SightingBatch a station's gateway sends for plan rows start:end."""
    at = day0 + timedelta(seconds=float(plan.sent_s[start]))
    sightings = [
        Sighting(
            tag_id=format_tag(tags[int(plan.tag[i])]),
            first_seen_at=day0 + timedelta(seconds=float(plan.first_s[i])),
            last_seen_at=day0 + timedelta(seconds=float(plan.last_s[i])),
            beacons=max(1, int((plan.last_s[i] - plan.first_s[i]) / 2)),
            peak_rssi_dbm=int(plan.rssi[i]),
            antenna=int(plan.antenna[i]),
            flags=int(plan.flags[i]),
        )
        for i in range(start, end)
    ]
    return SightingBatch(
        station_id=station_id(int(plan.station[start])), batch_seq=seq, sent_at=at, sightings=sightings
    )


def publisher(url: str, args: argparse.Namespace, day0: datetime, shared: dict[str, Any]) -> None:
    """A separate process: plan the day, then publish each batch (QoS 1) when the replay clock reaches its sent_at."""
    tags = bench_tags(args.chips)
    plan = plan_day(len(tags), args.stations, args.scale, args.gateway_batch_s)
    shared["planned"].value = len(plan.station)
    shared["full_day"].value = plan.full_day
    client = qos1_publisher(url, "city-pub")
    shared["ready"].set()
    shared["go"].wait()
    wall0: float = shared["wall0"].value
    seqs: dict[int, int] = {}
    late: list[float] = []
    unconfirmed: deque[mqtt.MQTTMessageInfo] = deque()
    for start, end in plan.batch_bounds():
        st = int(plan.station[start])
        seqs[st] = seqs.get(st, 0) + 1
        batch = batch_of(plan, start, end, day0, tags, seqs[st])
        due = wall0 + float(plan.sent_s[start]) / args.speed
        if (wait := due - time.time()) > 0.001:
            time.sleep(wait)
        while shared["sent"].value - shared["committed"].value > BACKLOG_MAX:
            time.sleep(0.05)
        late.append(time.time() - due)
        unconfirmed.append(client.publish(topics.station_topic(batch.station_id, "sightings"), batch.to_json(), qos=1))
        while unconfirmed and unconfirmed[0].is_published():
            unconfirmed.popleft()
        shared["sent"].value += end - start
    for info in unconfirmed:  # what paho still holds would be dropped by disconnect
        info.wait_for_publish(600)
    lateness = np.array(late or [0.0])
    shared["late_p99"].value = float(np.percentile(lateness, 99))
    shared["late_max"].value = float(lateness.max())
    client.disconnect()
    client.loop_stop()
    shared["done"].set()


def rss_mb(pid: int, tree: bool = False) -> float:
    """Resident memory of a process (and its children) in MB."""
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)] if tree else [proc]
    return float(sum(p.memory_info().rss for p in procs)) / 1e6


def committed(url: str) -> int:
    """Sightings the backend has committed so far."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(sightings), 0) FROM ingested_batches").fetchone()
    return int(row[0]) if row else 0


def start_database(engine: str, work: Path) -> Postgres:
    """An embedded server for the engine with track_commit_timestamp on (for the lag), and a fresh database on it."""
    data = work / "pg"
    pg = start_postgres(data, preload=engine_preload(engine))
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    pg.stop()  # a setting read at start
    return start_postgres(data, preload=engine_preload(engine))


def new_database(server: str, engine: str) -> str:
    """A fresh, migrated database on the server with sightings on the engine; returns its URL."""
    name = f"city_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    migrate(url, storage=StoragePolicy(engine))  # type: ignore[arg-type]
    return url


def start_backend(
    url: str, broker_url: str, shared_group: str | None, workers: int, engine: str, log: Path
) -> subprocess.Popen[bytes]:
    """`bikeguard backend` as a child process of its own, its output to a log file."""
    port = free_port()
    env = {
        **os.environ,
        "BIKEGUARD_ENVIRONMENT": "development",
        "BIKEGUARD_DATABASE_URL": url,
        "BIKEGUARD_STORAGE_ENGINE": engine,
        "BIKEGUARD_MQTT_URL": broker_url,
        "BIKEGUARD_MQTT_SHARED_GROUP": shared_group or "",
        "BIKEGUARD_MQTT_CLIENT_ID": "city-backend",
        "BIKEGUARD_INGEST_WORKERS": str(workers),
        "BIKEGUARD_HTTP_PORT": str(port),
    }
    with log.open("wb") as out:
        backend = subprocess.Popen(
            [sys.executable, "-m", "bikeguard.cli", "backend"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_for_http(f"http://127.0.0.1:{port}/api/health", timeout_s=120, process=backend)
    return backend


@dataclass
class HourSample:
    """The state of the run when the replay clock passed the end of a simulated hour."""

    hour: int
    sent: int
    committed: int
    backend_mb: float
    broker_mb: float


def replay(
    url: str, backend: subprocess.Popen[bytes], broker_pid: int, args: argparse.Namespace, shared: dict[str, Any]
) -> tuple[float, list[HourSample]]:
    """Start the replay clock, sample memory once per simulated hour, and wait until every sighting is committed;
    returns the replay clock's start (wall time, s) and the samples."""
    wall0 = time.time() + 2.0
    shared["wall0"].value = wall0
    shared["go"].set()
    samples: list[HourSample] = []
    hour = 1
    sent = shared["sent"]
    polled = 0.0
    while hour <= 24:
        if time.time() - polled >= 1.0:  # what the generator's backlog bound reads
            shared["committed"].value, polled = committed(url), time.time()
        if backend.poll() is not None:
            raise RuntimeError(f"the backend exited with {backend.returncode} at simulated hour {hour}")
        if (time.time() - wall0) * args.speed >= hour * 3600:
            samples.append(
                HourSample(hour, sent.value, committed(url), rss_mb(backend.pid, tree=True), rss_mb(broker_pid))
            )
            s = samples[-1]
            print(
                f"  {hour:02d}:00  sent {s.sent:>10,}  committed {s.committed:>10,}  backend {s.backend_mb:6.0f} MB"
                f"  broker {s.broker_mb:5.0f} MB",
                flush=True,
            )
            hour += 1
        time.sleep(0.2)
    deadline = time.time() + 600
    while True:  # the generator may still wait on its backlog bound, which reads "committed"
        finished = shared["done"].is_set()
        shared["committed"].value = done = committed(url)
        if finished and done >= sent.value:
            break
        if time.time() > deadline:
            raise TimeoutError(f"{done:,} of {sent.value:,} sightings committed 600 s after the day's end")
        time.sleep(0.5)
    samples.append(HourSample(25, sent.value, done, rss_mb(backend.pid, tree=True), rss_mb(broker_pid)))
    return wall0, samples


@dataclass
class Lag:
    """End-to-end lag and throughput, from each batch's commit timestamp."""

    p50_s: float
    p99_s: float
    max_s: float
    peak_10s: float  # sightings/s committed in the busiest 10 wall seconds
    peak_10s_batches: float  # and its messages (batches) per second
    batches: int
    peak_hour: int  # the busiest simulated hour
    peak_hour_sightings: int


def lag_of(url: str, day0: datetime, wall0: float, speed: float) -> Lag:
    """Per sighting, commit time minus the moment the replay clock reached its batch's sent_at."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM sent_at)::float8, sightings,"
            " extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 FROM ingested_batches"
        ).fetchall()
    sent_s = np.array([r[0] for r in rows]) - day0.timestamp()
    count = np.array([r[1] for r in rows])
    commit = np.array([r[2] for r in rows])
    lag = np.repeat(commit - (wall0 + sent_s / speed), count)
    window = ((commit - commit.min()) // 10).astype(np.int64)
    per_10s = np.bincount(window, weights=count) / 10
    per_hour = np.bincount((sent_s // 3600).astype(np.int64), weights=count, minlength=24)
    return Lag(
        p50_s=float(np.percentile(lag, 50)),
        p99_s=float(np.percentile(lag, 99)),
        max_s=float(lag.max()),
        peak_10s=float(per_10s.max()),
        peak_10s_batches=float(np.bincount(window)[per_10s.argmax()] / 10),
        batches=len(rows),
        peak_hour=int(per_hour.argmax()),
        peak_hour_sightings=int(per_hour.max()),
    )


def plain_size(url: str) -> int:
    """Bytes of the plain PostgreSQL partitions (with their indexes) that hold the day's sightings."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(p)) FROM (SELECT DISTINCT tableoid AS p FROM sightings) d"
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def copy_day(src: str, dst: str) -> None:
    """The day's rows from one database into another's sightings, by one binary COPY out and in."""
    with psycopg.connect(src) as a, psycopg.connect(dst) as b:
        with (
            a.cursor().copy(f"COPY (SELECT {SIGHTING_COLUMNS} FROM sightings) TO STDOUT (FORMAT BINARY)") as out,
            b.cursor().copy(f"COPY sightings ({SIGHTING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as into,
        ):
            for data in out:
                into.write(data)
        b.commit()
        b.autocommit = True  # VACUUM runs outside a transaction
        b.execute("VACUUM ANALYZE sightings")


def timescaledb_sizes(url: str) -> tuple[int, int, int]:
    """(the day's hypertable bytes before compression, after compress_chunk of its chunks, chunks compressed)."""
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT total_bytes FROM hypertable_detailed_size('sightings')").fetchone()
        chunks = conn.execute("SELECT compress_chunk(c) FROM show_chunks('sightings') c").fetchall()
        after = conn.execute("SELECT total_bytes FROM hypertable_detailed_size('sightings')").fetchone()
    assert before is not None and after is not None
    return int(before[0]), int(after[0]), len(chunks)


def peak_sample(plan: DayPlan, hour: int, day0: datetime, tags: list[int], limit: int) -> list[SightingBatch]:
    """Up to `limit` sightings of the given simulated hour, in the batches they travelled in (for the COPY limit)."""
    batches: list[SightingBatch] = []
    rows = 0
    for start, end in plan.batch_bounds():
        if int(plan.sent_s[start] // 3600) != hour:
            continue
        batches.append(batch_of(plan, start, end, day0, tags, len(batches) + 1))
        rows += end - start
        if rows >= limit:
            break
    return batches


def mb(n: float) -> str:
    """Bytes as MB with a thousands separator."""
    return f"{n / 1e6:,.0f} MB"


def report_memory(samples: list[HourSample]) -> None:
    """The memory line: range over the day, and the trend over the day's second half (MB per simulated hour)."""
    for name in ("backend_mb", "broker_mb"):
        values = np.array([getattr(s, name) for s in samples])
        second_half = np.array([getattr(s, name) for s in samples if s.hour >= 12])
        slope = float(np.polyfit(np.arange(len(second_half)), second_half, 1)[0]) if len(second_half) > 2 else 0.0
        print(
            f"{name.removesuffix('_mb')} RSS over the day: min {values.min():.0f} MB, max {values.max():.0f} MB,"
            f" at the end {values[-1]:.0f} MB; trend over 12:00-24:00 {slope:+.1f} MB per simulated hour"
        )


def day_sizes(server: str, url: str, engine: str) -> tuple[int, int | None, int]:
    """(the day's bytes on the engine uncompressed, compressed (TimescaleDB only), in plain PostgreSQL partitions)."""
    if engine != "timescaledb":
        plain = plain_size(url)
        return plain, None, plain
    plain_url = new_database(server, "postgresql")
    copy_day(url, plain_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE sightings")
    before, after, chunks = timescaledb_sizes(url)
    print(f"compressed {chunks} chunk{'s' if chunks != 1 else ''} of the day with compress_chunk")
    return before, after, plain_size(plain_url)


def report(args: argparse.Namespace, lag: Lag, limit: float, sizes: tuple[int, int | None, int]) -> None:
    """The figures' lines, the last one the headline."""
    peak_rate = lag.peak_hour_sightings * args.speed / 3600
    full_peak = lag.peak_hour_sightings / args.scale / 3600
    print(
        f"peak hour {lag.peak_hour:02d}:00-{lag.peak_hour + 1:02d}:00: {lag.peak_hour_sightings:,} sightings, offered"
        f" at {peak_rate:,.0f}/s; the full city's peak hour in real time is {full_peak:,.0f}/s, so this run carried"
        f" {args.scale * args.speed:.2f}x a full city's load"
    )
    before, after, plain = sizes
    per_day = 1 / args.scale
    compressed = "n/a on plain PostgreSQL" if after is None else mb(after)
    ratio = "" if after is None else f" ({before / max(after, 1):.1f}x)"
    full = "" if after is None else f", {mb(after * per_day)} compressed"
    print(
        f"the day's sightings on {args.engine}: {mb(before)} uncompressed, {compressed}{ratio}; plain PostgreSQL"
        f" {mb(plain)}; a full day (x{per_day:g}): {mb(before * per_day)} uncompressed{full}, {mb(plain * per_day)}"
        " plain"
    )
    print(
        f"end-to-end lag (batch sent -> committed): p50 {lag.p50_s * 1000:,.0f} ms, p99 {lag.p99_s * 1000:,.0f} ms,"
        f" max {lag.max_s * 1000:,.0f} ms"
    )
    print(
        f"city ({args.engine}, {args.scale * args.speed:.2f}x a full city's load): peak {lag.peak_10s:,.0f}"
        f" sightings/s committed ({lag.peak_10s_batches:,.0f} messages/s, busiest 10 s), lag p99"
        f" {lag.p99_s * 1000:,.0f} ms (COPY limit {limit:,.0f} rows/s, ratio {lag.peak_10s / limit:.2f})"
    )


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("postgresql", "timescaledb"), default=default_engine())
    parser.add_argument("--chips", type=int, default=1_000_000)
    parser.add_argument("--stations", type=int, default=10_000)
    parser.add_argument("--scale", type=float, default=0.02, help="the fraction of the bikes whose day is replayed")
    parser.add_argument("--speed", type=float, default=96.0, help="times faster than real time (96: 15 minutes)")
    parser.add_argument("--gateway-batch-s", type=float, default=GATEWAY_BATCH_S, help="a gateway's batch interval")
    parser.add_argument("--workers", type=int, default=1, help="BIKEGUARD_INGEST_WORKERS of the backend")
    parser.add_argument("--broker", default="auto", choices=("auto", "mosquitto", "amqtt"))
    parser.add_argument("--copy-sample", type=int, default=200_000, help="rows of the peak hour for the COPY limit")
    return parser.parse_args()


def run(args: argparse.Namespace, pg: Postgres, broker: Broker, work: Path, day0: datetime) -> None:
    """Register the city, replay its day through the backend, and print what was measured."""
    server = pg.url
    t = time.perf_counter()
    url = new_database(server, args.engine)
    tags = bench_tags(args.chips)
    register_stations(url, args.stations)
    register_chips(url, tags)
    print(
        f"{args.engine}, {broker.kind}: {len(tags):,} chips on registered bikes and {args.stations:,} stations"
        f" registered in {time.perf_counter() - t:.0f} s",
        flush=True,
    )
    ctx = mp.get_context("spawn")
    shared: dict[str, Any] = {name: ctx.Event() for name in ("ready", "go", "done")}
    shared |= {name: ctx.Value("q", 0) for name in ("sent", "committed", "planned", "full_day")}
    shared |= {name: ctx.Value("d", 0.0) for name in ("wall0", "late_p99", "late_max")}
    group = f"city-{uuid.uuid4().hex[:6]}" if broker.supports_shared_subscriptions else None
    backend = start_backend(url, broker.url, group, args.workers, args.engine, work / "backend.log")
    pub = ctx.Process(target=publisher, args=(broker.url, args, day0, shared), daemon=True)
    try:
        pub.start()
        if not shared["ready"].wait(600):
            raise TimeoutError("the generator did not get ready in 600 s")
        planned, full_day = shared["planned"].value, shared["full_day"].value
        print(
            f"the day {day0:%Y-%m-%d}: {planned:,} sightings replayed of about {full_day:,} in the full day"
            f" ({planned / full_day:.1%}; --scale {args.scale:g}), at {args.speed:g}x real time"
            f" ({DAY_S / args.speed / 60:.1f} minutes)",
            flush=True,
        )
        wall0, samples = replay(url, backend, broker.process.pid, args, shared)
    except BaseException:
        print(f"backend log (last lines):\n{(work / 'backend.log').read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        stop_process(backend)
        pub.join(10)
    lag = lag_of(url, day0, wall0, args.speed)
    print(
        f"all {committed(url):,} sightings committed once (sent {samples[-1].sent:,}) in {lag.batches:,} messages"
        f" ({samples[-1].sent / lag.batches:.2f} sightings per message)"
    )
    report_memory(samples)
    print(
        f"generator lateness behind the replay clock: p99 {shared['late_p99'].value:.3f} s,"
        f" max {shared['late_max'].value:.3f} s"
    )
    plan = plan_day(len(tags), args.stations, args.scale, args.gateway_batch_s)
    flush_rows = BackendSettings(environment="development", database_url=server).ingest_flush_rows
    sample = peak_sample(plan, lag.peak_hour, day0, tags, args.copy_sample)
    limit = copy_limit(new_database(server, args.engine), sample, flush_rows, pg)
    report(args, lag, limit, day_sizes(server, url, args.engine))


def main() -> int:
    """Run the benchmark and print its figures."""
    args = parse_args()
    # A SIGTERM (a timeout) goes through the finally blocks, so no server is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bikeguard-city-"))
    day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    pg = start_database(args.engine, work)
    try:
        broker = start_broker(args.broker)
        try:
            run(args, pg, broker, work, day0)
        finally:
            broker.stop()
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
