"""Alarm latency: from a stolen chip's first frame on the serial line to the alarm on the live feed, and to the
owner's notification request (the SMS the backend's sender hands to an SMS gateway, a local HTTP stand-in here).

Real parts in separate processes: PostgreSQL, a broker (Mosquitto when installed), the backend
(`bikeguard backend`), a gateway reading a pty, and a load publisher sending ordinary sightings batches
at a steady rate through the same broker. This process writes a stolen chip's beacon frame into the pty
and waits for that chip's alarm on /api/live (server-sent events). Beside it, the machine's floor in the
same run: the time for an MQTT QoS 1 message to go publisher → broker → subscriber.

Second-last line:  owner notification latency: p50 <X> ms, p99 <Y> ms (first frame → the SMS gateway's request)
Last line:  alarm latency: p50 <X> ms, p99 <Y> ms at <Z> sightings/s background

--chips-kind v2 (issue 17) makes the stolen chips and the background's chips v2 chips (their keys fitted as the
counter keeps them, the background's sightings carrying sealed beacons that the ingest resolves). The gateway on
main does not read v2 frames yet, so a v2 trial starts where a v2 station's work ends: this process publishes the
station's hotlist_hit alert carrying the stolen chip's beacon, and the clock runs from that publish to the alarm on
the live feed. `--chips-kind v1 v2` runs, interleaved under the same background, the v1 path from the serial line,
a v1 alert published the same way (the like-for-like figure for the v2 one) and the v2 alert; one line each:

    alarm latency, <path>: p50 <X> ms, p99 <Y> ms at <Z> sightings/s background (<kind> chips)

Run: python bench/alarm_latency.py [--trials 200] [--background 20000] [--chips-kind v1|v2 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg
from ingest import (  # bench/ingest.py, beside this
    as_v2,
    bench_keys,
    bench_tags,
    build_batches,
    chip_key_rows,
    fit_v2_chips,
    qos1_publisher,
    register_chips,
    register_stations,
)

from backend.settings import BackendSettings
from backend.vault import Vault
from bikeguard.demo import bootstrap_admin, seed_backend, sign_in, wait_for_http
from bikeguard.services import default_engine, engine_preload, free_port, start_broker, start_postgres, stop_process
from firmware_sim.town import Town
from protocol import topics
from protocol.beacon_v2 import ChipKey, window_of
from protocol.frames import Beacon, TagFlags, encode
from protocol.messages import Alert, format_tag, utcnow
from protocol.mqtt_address import mqtt_address
from protocol.signing import generate_signing_key, public_key_of

# The background load's stations, bg-000 …: not the town's st-001 … (its gateway numbers its batches itself).
BACKGROUND_STATIONS = "bg"


def load_publisher(
    url: str, rate: int, per_batch: int, seconds: int, ready: mp.Event, stop: mp.Event, sent: mp.Value, kind: str
) -> None:
    """A separate process: ordinary sightings at `rate` per second, in batches, paced every 50 ms; from v2 chips
    (sealed beacons, in the windows around now) when `kind` is v2."""
    tags = bench_tags(seed=3)
    if kind == "v2":
        start = datetime.now(UTC) - timedelta(seconds=30)
        batches = as_v2(
            build_batches(rate * seconds, per_batch, 200, tags, seed=3, start=start, prefix=BACKGROUND_STATIONS),
            bench_keys(tags),
            time.time() - 3600,
        )
    else:
        batches = build_batches(rate * seconds, per_batch, 200, tags, seed=3, prefix=BACKGROUND_STATIONS)
    payloads = [(topics.station_topic(b.station_id, "sightings"), b.to_json()) for b in batches]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"load-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    host, port, user, password = mqtt_address(url)
    client.username_pw_set(user, password)
    client.connect(host, port)
    client.loop_start()
    ready.set()
    per_tick = rate / per_batch / 20
    started, ticks, i, owed = time.perf_counter(), 0, 0, 0.0
    while not stop.is_set() and i < len(payloads):
        owed += per_tick
        while owed >= 1 and i < len(payloads):
            client.publish(*payloads[i], qos=1)
            i += 1
            owed -= 1
            sent.value += per_batch
        ticks += 1
        time.sleep(max(0.0, started + ticks * 0.05 - time.perf_counter()))
    client.disconnect()
    client.loop_stop()


def mqtt_floor(url: str, n: int = 200) -> list[float]:
    """Milliseconds for a QoS 1 message from one client through the broker to another."""
    got = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"floor-sub-{uuid.uuid4().hex[:6]}")
    sub.on_message = lambda *_: got.set()
    host, port, user, password = mqtt_address(url)
    sub.username_pw_set(user, password)
    sub.connect(host, port)
    sub.subscribe("bench/floor", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"floor-pub-{uuid.uuid4().hex[:6]}")
    pub.username_pw_set(user, password)
    pub.connect(host, port)
    pub.loop_start()
    time.sleep(0.5)
    out = []
    for _ in range(n):
        got.clear()
        t = time.perf_counter()
        pub.publish("bench/floor", b"x", qos=1)
        if got.wait(5):
            out.append((time.perf_counter() - t) * 1000)
        time.sleep(0.005)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return out


class AlarmWatcher(threading.Thread):
    """Reads /api/live and records when each tag's alarm first arrives."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.arrived: dict[str, float] = {}
        self.ready = threading.Event()
        self.cond = threading.Condition()

    def run(self) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the backend goes away at the end of the run
            self._read()

    def _read(self) -> None:
        with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(5, read=None)) as r:
            for line in r.iter_lines():
                if line.startswith(": connected"):
                    self.ready.set()
                if line.startswith("data: "):
                    tag = json.loads(line[6:]).get("tag_id")
                    with self.cond:
                        self.arrived.setdefault(tag, time.perf_counter())
                        self.cond.notify_all()

    def wait_for(self, tag: str, timeout_s: float) -> float | None:
        """When the tag's alarm arrived (perf_counter), or None after timeout_s."""
        deadline = time.perf_counter() + timeout_s
        with self.cond:
            while tag not in self.arrived:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.arrived[tag]


class SmsGateway:
    """A local HTTP stand-in for the SMS gateway: records when each request arrived and what it said."""

    def __init__(self) -> None:
        self.received: list[tuple[float, str]] = []
        self.arrived = threading.Condition()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                with gateway.arrived:
                    gateway.received.append((at, body))
                    gateway.arrived.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, plate: str, timeout_s: float) -> float | None:
        """When the first SMS naming `plate` arrived (perf_counter), or None after timeout_s."""
        deadline = time.perf_counter() + timeout_s
        with self.arrived:
            while True:
                for at, body in self.received:
                    if plate in json.loads(body)["text"]:
                        return at
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                self.arrived.wait(left)


def tell_owners_by_sms(database_url: str) -> dict[str, str]:
    """Every bench bike's owner chooses SMS; each chip's plate (what its SMS names)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notification_preferences (owner_id, channels, language)"
            " SELECT owner_id, '{sms}', 'en' FROM owners ON CONFLICT (owner_id) DO NOTHING"
        )
        rows = conn.execute("SELECT c.tag_id, b.plate FROM chips c JOIN bikes b USING (bike_id)").fetchall()
    return {format_tag(int(tag)): str(plate) for tag, plate in rows}


def v2_alert(station_id: str, key: ChipKey, counter: int) -> bytes:
    """The hotlist_hit alert a v2 station sends at a stolen chip's first beacon: the beacon, no tag id."""
    now = utcnow()
    beacon = key.seal(window_of(now.timestamp()), counter, TagFlags.MOTION)
    alert = Alert(
        station_id=station_id, kind="hotlist_hit", heard=beacon.to_bytes().hex(), seen_at=now, rssi_dbm=-60, antenna=0
    )
    return alert.to_json()


def warm_up_v2_alert(database_url: str, alerts: mqtt.Client, topic: str, station_id: str, key: bytes) -> None:
    """One v2 alert of a background chip (fitted, not stolen: no alarm) before the trials, waited for until stored.
    The backend was started before the bench fitted its chips, so its alerts lane's first v2 beacon makes it pick up
    every chip fitted since (a key schedule each, about a second for 50,000 chips): a county's backend did that
    when they were fitted, not at a theft, and the first v2 trial measured it (one trial in a run, 1.1-1.5 s)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM station_alerts").fetchone()
        alerts.publish(topic, v2_alert(station_id, ChipKey(key), 1), qos=1)
        deadline = time.monotonic() + 60
        while conn.execute("SELECT count(*) FROM station_alerts").fetchone() == before:
            if time.monotonic() > deadline:
                raise TimeoutError("the warm-up v2 alert was not stored within 60 s")
            time.sleep(0.1)


def v1_alert(station_id: str, tag: int) -> bytes:
    """The hotlist_hit alert a v1 station sends at a stolen chip's first beacon."""
    return Alert(
        station_id=station_id, kind="hotlist_hit", tag_id=format_tag(tag), seen_at=utcnow(), rssi_dbm=-60, antenna=0
    ).to_json()


def median(values: list[float]) -> float:
    """The middle value."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


# The ways a trial raises its stolen chip's alarm: the v1 frame on the serial line (the gateway flags it), or the
# station's alert published by this process (v1: the tag id; v2: the chip's beacon, resolved by the ingest).
FRAME_V1, ALERT_V1, ALERT_V2 = "v1 frame → gateway", "v1 alert published", "v2 alert published"


def trial_paths(kinds: list[str]) -> list[str]:
    """The trial paths for the chip kinds asked for: v1 alone is the bench as it was."""
    if kinds == ["v1"]:
        return [FRAME_V1]
    if kinds == ["v2"]:
        return [ALERT_V2]
    return [FRAME_V1, ALERT_V1, ALERT_V2]


def split_at_transaction(database_url: str, walls: dict[int, tuple[str, float, float]], paths: list[str]) -> None:
    """Print, per path, each alarm's latency split where the backend's transaction that raised it began: the trial's
    start → that transaction (station, broker, the ingest's lanes and resolution), and that transaction → the live
    feed (the transaction itself, its commit, the NOTIFY and the feed)."""
    with psycopg.connect(database_url) as conn:
        raised = dict(
            conn.execute(
                "SELECT tag_id, min(raised_at) FROM alarms WHERE kind = 'stolen_chip_seen' AND tag_id = ANY(%s)"
                " GROUP BY tag_id",
                (list(walls),),
            ).fetchall()
        )
    for path in paths:
        before, after = [], []
        for tag, (p, start, arrived) in walls.items():
            if p == path and tag in raised:
                at = raised[tag].timestamp()
                before.append((at - start) * 1000)
                after.append((arrived - at) * 1000)
        if before:
            print(
                f"  {path}: start → the alarm's transaction p50 {median(before):.0f} ms, p99"
                f" {percentile(before, 99):.0f} ms; that transaction → the live feed p50 {median(after):.0f} ms,"
                f" p99 {percentile(after, 99):.0f} ms"
            )


def report(
    paths: list[str],
    latencies: dict[str, list[float]],
    told: dict[str, list[float]],
    trials: int,
    background: float,
    background_kind: str,
) -> bool:
    """Print each path's notification and alarm latencies (the alarm lines last); whether every trial's alarm and
    SMS arrived."""
    for path in paths:
        if told[path]:
            print(
                f"owner notification latency, {path}: p50 {median(told[path]):.0f} ms,"
                f" p99 {percentile(told[path], 99):.0f} ms ({len(told[path])}/{trials} SMS requests;"
                " trial start → the SMS gateway's request)"
            )
        else:
            print(f"no owner notification arrived, {path}", file=sys.stderr)
    print(f"load average at the end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    for path in paths:
        got = latencies[path]
        if not got:
            print(f"alarm latency, {path}: no alarm arrived", file=sys.stderr)
            continue
        print(
            f"alarm latency{'' if paths == [FRAME_V1] else ', ' + path}: p50 {median(got):.0f} ms,"
            f" p99 {percentile(got, 99):.0f} ms at {background:,.0f} sightings/s background"
            f" ({len(got)}/{trials} alarms; background of {background_kind} chips)"
        )
    return all(len(latencies[p]) == len(told[p]) == trials for p in paths)


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200, help="trials per path")
    parser.add_argument("--background", type=int, default=20_000, help="sightings/s of ordinary load")
    parser.add_argument("--broker", default="auto", choices=("auto", "mosquitto", "amqtt"))
    parser.add_argument("--unregistered", action="store_true", help="leave the background's chips unregistered")
    parser.add_argument(
        "--chips-kind",
        nargs="+",
        default=["v1"],
        choices=("v1", "v2"),
        help="the stolen chips' kinds; with v2 the background's chips are v2 chips too",
    )
    args = parser.parse_args()
    if "v2" in args.chips_kind and args.unregistered:
        parser.error("v2 chips resolve only when registered: --unregistered runs v1 chips alone")
    paths = trial_paths(args.chips_kind)
    background_kind = "v2" if "v2" in args.chips_kind else "v1"

    work = Path(tempfile.mkdtemp(prefix="bikeguard-bench-"))
    engine = default_engine()
    pg = start_postgres(preload=engine_preload(engine))  # TimescaleDB when installed
    broker = start_broker(args.broker)
    port = free_port()
    sms = SmsGateway()
    env = {
        **os.environ,
        "BIKEGUARD_ENVIRONMENT": "development",
        "BIKEGUARD_DATABASE_URL": pg.url,
        "BIKEGUARD_MQTT_URL": broker.url,
        "BIKEGUARD_MQTT_SHARED_GROUP": "bench" if broker.supports_shared_subscriptions else "",
        "BIKEGUARD_MQTT_CLIENT_ID": "bench-backend",
        "BIKEGUARD_HTTP_PORT": str(port),
        # The backend's own notification sender hands owners' SMS to the stand-in.
        "BIKEGUARD_SMS_GATEWAY_URL": sms.url,
        # The gateway takes only hot lists signed with this key (its public half below).
        "BIKEGUARD_HOTLIST_SIGNING_KEY": generate_signing_key(),
    }
    procs: list[subprocess.Popen[bytes]] = []
    stop = mp.get_context("spawn").Event()
    print(f"load average at the start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}", flush=True)
    try:
        backend = subprocess.Popen([sys.executable, "-m", "bikeguard.cli", "backend"], env=env, start_new_session=True)
        procs.append(backend)
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/api/health", process=backend)
        # Stations and bikes registered through the API as installers and clerks do; then police report
        # every bench bike stolen, so each trial is a fresh chip on the hot list.
        town = Town.generate(11, stations=5, bikes=args.trials * len(paths))
        staff = seed_backend(base, town, bootstrap_admin(pg.url))
        register_stations(pg.url, 200, BACKGROUND_STATIONS)  # the stations of the background load
        vault = Vault.from_settings(BackendSettings(environment="development", database_url=pg.url))
        background_keys: dict[int, bytes] = {}
        if not args.unregistered:
            background_tags = bench_tags(seed=3)
            register_chips(pg.url, background_tags)  # and its chips, registered bikes as in a real county
            if background_kind == "v2":
                background_keys = bench_keys(background_tags)
                fit_v2_chips(pg.url, chip_key_rows(background_keys, vault))
        police = sign_in(base, staff.police)
        for bike_id, _first_login in staff.owners.values():
            police.post(
                f"/api/bikes/{bike_id}/theft", params={"case_number": "BENCH-1"}, json={"place": "bench"}
            ).raise_for_status()
        # Trials interleaved path by path, so each path sees the same background over time.
        tags = [b.tag_id for b in town.bikes]
        trials = [(paths[i % len(paths)], tag) for i, tag in enumerate(tags)]
        v2_keys = bench_keys([tag for path, tag in trials if path == ALERT_V2], seed=29)
        if v2_keys:
            fit_v2_chips(pg.url, chip_key_rows(v2_keys, vault))  # fitted before the ingest's table is built
        plates = tell_owners_by_sms(pg.url)
        headers = dict(police.headers)
        station_id = town.stations[0].station_id

        master, slave = os.openpty()
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--station-id",
                station_id,
                "--serial",
                os.ttyname(slave),
                "--mqtt",
                broker.url,
                "--spool",
                str(work / "bench.spool"),
                "--log-level",
                "WARNING",
            ],
            env={
                **os.environ,
                "BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY": public_key_of(env["BIKEGUARD_HOTLIST_SIGNING_KEY"]),
            },
            start_new_session=True,
        )
        procs.append(gateway)
        watcher = AlarmWatcher(f"{base}/api/live", headers)
        watcher.start()
        watcher.ready.wait(10)
        time.sleep(3)  # the gateway connects and receives the retained hot list
        alerts = qos1_publisher(broker.url, "bench-station")  # a station's alerts, for the published paths
        if background_keys:
            key = next(iter(background_keys.values()))
            warm_up_v2_alert(pg.url, alerts, topics.station_topic(station_id, "alerts"), station_id, key)

        ctx = mp.get_context("spawn")
        sent, loader_ready = ctx.Value("q", 0), ctx.Event()
        seconds = int(len(trials) * 0.2) + 20
        loader = ctx.Process(
            target=load_publisher,
            args=(broker.url, args.background, 250, seconds, loader_ready, stop, sent, background_kind),
        )
        loader.start()
        print(f"building {args.background * seconds:,} background sightings of {background_kind} chips …", flush=True)
        loader_ready.wait(600)
        time.sleep(3)  # let the background load settle (a v2 worker builds its resolution table at the first)
        load_started, load_sent = time.perf_counter(), sent.value
        stored_before = police.get("/api/health/ingest").json()["ingest"]["sightings"]

        latencies: dict[str, list[float]] = {path: [] for path in paths}
        told: dict[str, list[float]] = {path: [] for path in paths}
        # Each trial's start and its alarm's arrival by the wall clock, to split its latency where the backend's
        # transaction that raised the alarm began (alarms.raised_at; one machine, one clock).
        walls: dict[int, tuple[str, float, float]] = {}
        alert_topic = topics.station_topic(station_id, "alerts")
        for i, (path, tag) in enumerate(trials):
            t0, wall0 = time.perf_counter(), time.time()
            if path == FRAME_V1:
                os.write(master, encode(Beacon(tag, i, TagFlags.MOTION, -60, 0)))
            elif path == ALERT_V1:
                alerts.publish(alert_topic, v1_alert(station_id, tag), qos=1)
            else:
                alerts.publish(alert_topic, v2_alert(station_id, ChipKey(v2_keys[tag]), i + 1), qos=1)
            arrived = watcher.wait_for(format_tag(tag), timeout_s=10)
            if arrived is not None:
                latencies[path].append((arrived - t0) * 1000)
                walls[tag] = (path, wall0, wall0 + arrived - t0)
            sent_at = sms.wait_for(plates[format_tag(tag)], timeout_s=10)
            if sent_at is not None:
                told[path].append((sent_at - t0) * 1000)
            time.sleep(0.1)
        during = time.perf_counter() - load_started
        background = (sent.value - load_sent) / during
        # What the ingest kept up with: offered is not stored when the ingest falls behind.
        stored_rate = (police.get("/api/health/ingest").json()["ingest"]["sightings"] - stored_before) / during
        stop.set()
        loader.join(30)
        alerts.disconnect()
        alerts.loop_stop()
        floor = mqtt_floor(broker.url)
        health = police.get("/api/health/ingest").json()["ingest"]
        arrived_all = sum(len(v) for v in latencies.values())
        print(
            f"{arrived_all}/{len(trials)} alarms arrived; ingest stored {health['sightings']:,} background "
            f"sightings ({background_kind} chips), {stored_rate:,.0f}/s while the trials ran ({background:,.0f}/s"
            f" offered); broker {broker.kind}; {engine}"
        )
        print(f"machine floor: MQTT QoS 1 hop p50 {median(floor):.2f} ms, p99 {percentile(floor, 99):.2f} ms")
        if not arrived_all:
            print("no alarm arrived", file=sys.stderr)
            return 1
        split_at_transaction(pg.url, walls, paths)
        return 0 if report(paths, latencies, told, args.trials, background, background_kind) else 1
    finally:
        stop.set()
        for p in reversed(procs):
            stop_process(p)
        broker.stop()
        pg.stop()
        sms.server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
