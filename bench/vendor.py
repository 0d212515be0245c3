"""Vendor bridge benchmark: how many MR7901 stations one bridge serves on one core, and how fast a read goes out.

The real bridge (`python -m gateway vendor`) runs as a process of its own pinned to one core; simulated MR7901
stations (firmware_sim.mr7901_station: real TCP, frames split at random) run in another process on the other
core, with the broker (Mosquitto when installed, else the embedded amqtt) and this process, which plays the
backend: it confirms every sightings batch (so the spools drain) and measures. The stations ramp (default 100,
250, 500, 1000; a fresh bridge and spools for each step); each station hears 20 reads/s of distinct tags, 40 in
range at a time, each beaconing every 2 s for a stay of 10-30 s, so passages form and close. Like stations on
separate poles, each hears, ticks and uploads at a phase of its own (the simulator's collector is off once they
are logged in); how even the load on the bridge is shows as the uploads written per 20 ms (p99 and max beside the
mean).

Per step, over --seconds after a warm-up: stations logged in (their status on the broker says online), reads/s the
bridge took (its /metrics) beside those the stations heard and had acknowledged, the bridge's share of its core
and how much of the wall time its garbage collector ran (its /metrics), its RSS, upload -> acknowledgement latency
(the station writes an upload; the bridge replies once the reads are checkpointed in the station's spool and that
spool is synced to disk), and two publish latencies:

- read -> publish (alert): a sighting goes out only when its passage closes (passage gap), so the latency of
  what goes out at once is measured: a hot-listed chip's alert. A real signed hot list (retained, as the backend
  publishes it) holds the hot tags; a few stations a second hear one. Measured from the moment the simulated
  station starts writing the upload carrying that read to the moment this process receives the alert.
- sighting publish - (last read + passage gap): the part of a sighting's delay that is not aggregation.

Beside them, measured in the same run: fsync'd SQLite commits/s on the spools' disk (a station commits its spool
about once a second) and the bare Mr7901Decoder's reads/s on one core; and how long the bridge waited for its
core while runnable (/proc/<pid>/schedstat: other processes on a shared machine). A step is served when every
station is logged in and its status says online, the reads heard but not yet acknowledged grow by less than a
second's worth over the step, no upload is resent, every hot read's alert came and the bridge's core is not
saturated; the last such step is "stations served on one core". Last line:

    vendor bridge: <N> stations served on one core (<R> reads/s, <C> % of the core); alert p99 <P> ms at <M> stations

Run: python bench/vendor.py [--steps 100,250,500,1000] [--seconds 30] [--warmup-s 25] [--quick]
                            [--broker auto|mosquitto|amqtt] [--profile STATIONS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import pstats
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families
from spool import sqlite_limits  # bench/spool.py, beside this

from bikeguard.services import Broker, free_port, start_broker, stop_process
from firmware_sim.mr7901_station import VendorStation
from gateway.settings import GatewaySettings
from protocol.frames import Beacon, TagFlags
from protocol.messages import CONFIRMATION_MAX_SEQS, Confirmation, Hotlist, parse_tag, utcnow
from protocol.mr7901 import Mr7901Decoder, Request, TagRead, TagUpload, encode
from protocol.signing import generate_signing_key, public_key_of, read_signing_key, sign_hotlist
from protocol.topics import HOTLIST, ROOT, confirmations_topic

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TIME_ZONE = "Asia/Shanghai"
READS_PER_S = 20  # each station's load, as the issue sets it
BEACON_INTERVAL_S = 2
TAGS_IN_RANGE = READS_PER_S * BEACON_INTERVAL_S
STAY_BEACONS = (5, 15)  # a tag stays 10-30 s in range, then a new one takes its place
HOT_BASE = 0x7F000000  # hot-listed tags; ordinary tags are below
HOT_TAGS = 2000
PHASES_A_SECOND = 50  # the stations hear their second's beacons in this many groups, each at a phase of its own
BURST_BIN_S = 0.020  # uploads written are counted in bins this long: how bursty the load on the bridge is
GC_SECONDS = "bikeguard_gateway_gc_seconds_total"  # summed over the generations by scrape()
PASSAGE_GAP_S = GatewaySettings.model_fields["passage_gap_s"].default


def station_id(i: int) -> str:
    """The Bikeguard station of simulated vendor station i."""
    return f"st-v{i:05d}"


def device_id(i: int) -> str:
    """The MR7901 device id of simulated vendor station i."""
    return f"MR7901-{i:06d}"


# ---------------------------------------------------------------------------------------------------------------
# The stations' process


class TimedStation(VendorStation):
    """A simulated vendor station that notes when it writes each upload, when it is acknowledged, and when an
    upload carrying a hot-listed read leaves."""

    def __init__(self, *args: Any, record: StationRecord, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record
        self.sent: set[int] = set()

    async def _write(self, writer: asyncio.StreamWriter, requests: list[Request]) -> None:
        now = time.time()
        for request in requests:
            if isinstance(request, TagUpload) and request.sequence not in self.sent:
                self.sent.add(request.sequence)
                self.record.upload_bins[int(now / BURST_BIN_S)] += 1
                for read in request.reads:
                    if read.tag_id >= HOT_BASE:
                        self.record.hot_written[read.tag_id] = now
                waiting = self._waiting.get(request.sequence)
                if waiting is not None:
                    waiting.add_done_callback(self._acked(now))
        await super()._write(writer, requests)

    def _acked(self, written_at: float) -> Any:
        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled():
                self.record.ack_s.append(time.time() - written_at)

        return done


@dataclass
class StationRecord:
    """What the stations' process measured since its last report."""

    ack_s: list[float] = field(default_factory=list)
    hot_written: dict[int, float] = field(default_factory=dict)
    upload_bins: Counter[int] = field(default_factory=Counter)  # uploads first written, by BURST_BIN_S of time


class Crowd:
    """The tags in range of one station: TAGS_IN_RANGE slots, half beaconing on even seconds and half on odd ones,
    each tag staying a few beacons before a new one (a new id) takes its slot."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.base = (index + 1) << 16
        self.rng = rng
        self.next_id = 0
        self.slots = [self._new_tag() for _ in range(TAGS_IN_RANGE)]

    def _new_tag(self) -> list[int]:
        self.next_id += 1
        return [self.base + (self.next_id & 0xFFFF), self.rng.randint(*STAY_BEACONS), 0]  # tag, beacons left, counter

    def beacons(self, second: int) -> list[Beacon]:
        """The beacons heard at this whole second."""
        out = []
        for i in range(second % 2, TAGS_IN_RANGE, 2):
            slot = self.slots[i]
            slot[2] += 1
            out.append(Beacon(slot[0], slot[2] & 0xFFFF, TagFlags(0), self.rng.randint(-90, -45), i % 2))
            slot[1] -= 1
            if slot[1] <= 0:
                self.slots[i] = self._new_tag()
        return out


def stations_process(
    control: Connection, port: int, count: int, hot_per_s: float, cores: set[int] | None, seed: int
) -> None:
    """The simulated stations' process: run them and answer the bench's commands over `control`."""
    if cores:
        os.sched_setaffinity(0, cores)
    asyncio.run(_stations(control, port, count, hot_per_s, seed))


async def _stations(control: Connection, port: int, count: int, hot_per_s: float, seed: int) -> None:
    rng = random.Random(seed)
    record = StationRecord()
    stations = [
        TimedStation(
            "127.0.0.1",
            port,
            device_id(i),
            time_zone=TIME_ZONE,
            heartbeat_interval_s=30.0,
            upload_interval_s=1.0,
            reply_timeout_s=5.0,
            rng=random.Random(seed + i),
            record=record,
        )
        for i in range(count)
    ]
    crowds = [Crowd(i, random.Random(seed * 7919 + i)) for i in range(count)]
    tasks = []
    for station in stations:
        tasks.append(asyncio.create_task(station.run()))
        await asyncio.sleep(0.002)  # not 1,000 connects in one instant: the listen backlog would refuse some
    # Each station hears its second's beacons at a phase of its own, as stations on separate poles do: heard all in
    # one callback, a thousand stations' reads took the process ~200 ms every second, and the uploads due meanwhile
    # all went out the moment it ended, a burst of up to 13 times the mean rate at the bridge that no county's
    # stations, each on its own clock, would send.
    order = list(range(count))
    rng.shuffle(order)
    slices = [[(stations[i], crowds[i]) for i in order[k::PHASES_A_SECOND]] for k in range(PHASES_A_SECOND)]
    heard, hot_on, hot_next, hot_owed = 0, False, 0, 0.0
    cpu0 = time.process_time()
    second, phase = int(time.time()) + 1, 0
    settled = False
    while True:
        while control.poll():
            command = control.recv()
            if command == "hot":
                hot_on = True
            elif command == "report":
                control.send(_report(stations, record, heard, time.process_time() - cpu0))
                record.ack_s, record.hot_written, record.upload_bins = [], {}, Counter()
            elif command == "stop":
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                control.send("stopped")
                return
        due = second + phase / PHASES_A_SECOND
        # Never a second's groups in one go, even when behind: the stations' writes between them.
        await asyncio.sleep(max(0.0, min(0.05, due - time.time())))
        if time.time() < due:
            continue
        if not settled and sum(s.stats.logins > 0 for s in stations) == count:
            # The simulator's own collections (gen 1 40 ms, full 90-140 ms at 1,000 stations) held every station's
            # writes and let them go together, as its beacon burst did; they found no garbage (it makes no cycles).
            settled = True
            gc.collect()
            gc.freeze()
            gc.disable()
        heard_at = datetime.fromtimestamp(second, UTC)  # a read's time has whole seconds: stamped exactly
        for station, crowd in slices[phase]:
            for beacon in crowd.beacons(second):
                station.hear(beacon, heard_at)
                heard += 1
        if hot_on:
            hot_owed += hot_per_s / PHASES_A_SECOND
            while hot_owed >= 1 and slices[phase]:
                hot_owed -= 1
                tag = HOT_BASE + hot_next % HOT_TAGS
                hot_next += 1
                rng.choice(slices[phase])[0].hear(Beacon(tag, 1, TagFlags(0), -60, 0), heard_at)
        phase += 1
        if phase == PHASES_A_SECOND:
            second, phase = second + 1, 0


def _report(stations: list[TimedStation], record: StationRecord, heard: int, cpu_s: float) -> dict[str, Any]:
    return {
        "at": time.time(),
        "heard": heard,
        "acked": sum(s.stats.reads_uploaded for s in stations),
        "logins": sum(s.stats.logins > 0 for s in stations),
        "connections": sum(s.stats.connections for s in stations),
        "resent": sum(s.stats.uploads_resent for s in stations),
        "pending": sum(s.pending_reads for s in stations),
        "dropped": sum(s.stats.reads_dropped for s in stations),
        "cpu_s": cpu_s,
        "ack_s": record.ack_s,
        "hot_written": record.hot_written,
        "upload_bins": record.upload_bins,
    }


# ---------------------------------------------------------------------------------------------------------------
# The backend's part: confirm, and measure what is published


class Backend:
    """Receives what the bridge's stations publish: confirms each sightings batch (gathered per station every
    flush), and notes when alerts, sightings and statuses arrive."""

    def __init__(self, broker: Broker, flush_interval_s: float = 0.1) -> None:
        self.flush_interval_s = flush_interval_s
        self.lock = threading.Lock()
        self.alerts: dict[tuple[str, int], float] = {}  # (station, tag) -> received at
        self.sighting_delay_s: list[float] = []  # received - (last read + passage gap)
        self.batches = 0
        self.online: dict[str, bool] = {}
        self.hotlist_versions: dict[str, int | None] = {}
        self._to_confirm: defaultdict[str, list[int]] = defaultdict(list)
        self._stop = threading.Event()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-backend-{uuid.uuid4().hex[:8]}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.username_pw_set(broker.username, broker.password)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(f"{ROOT}/stations/+/{kind}", 1) for kind in ("sightings", "alerts", "status")])
        if not subscribed.wait(10):
            raise RuntimeError("the stand-in backend's subscription was not acknowledged")
        self._thread = threading.Thread(target=self._flushes, name="confirmer", daemon=True)
        self._thread.start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        station, kind = msg.topic.split("/")[-2:]
        body = orjson.loads(msg.payload)
        with self.lock:
            if kind == "alerts":
                self.alerts.setdefault((station, parse_tag(body["tag_id"])), now)
            elif kind == "sightings":
                self.batches += 1
                self._to_confirm[station].append(body["batch_seq"])
                for s in body["sightings"]:
                    closes_at = datetime.fromisoformat(s["last_seen_at"]).timestamp() + PASSAGE_GAP_S
                    self.sighting_delay_s.append(now - closes_at)
            elif kind == "status":
                self.online[station] = body["state"] == "online"
                self.hotlist_versions[station] = body.get("hotlist_version")

    def _flushes(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            with self.lock:
                due, self._to_confirm = self._to_confirm, defaultdict(list)
            for station, seqs in due.items():
                for i in range(0, len(seqs), CONFIRMATION_MAX_SEQS):
                    message = Confirmation(
                        station_id=station, batch_seqs=seqs[i : i + CONFIRMATION_MAX_SEQS], sent_at=utcnow()
                    )
                    self.client.publish(confirmations_topic(station), message.to_json(), qos=1)

    def take(self) -> tuple[dict[tuple[str, int], float], list[float]]:
        """The alerts and sighting delays received since the last call."""
        with self.lock:
            alerts, delays = self.alerts, self.sighting_delay_s
            self.alerts, self.sighting_delay_s = {}, []
        return alerts, delays

    def publish_hotlist(self, signing_key: str) -> None:
        """A signed hot list of the HOT_TAGS tags, retained, as the backend publishes it."""
        issued_at = utcnow()
        hotlist = Hotlist(
            version=int(issued_at.timestamp() * 1000),
            issued_at=issued_at,
            tags=[f"{HOT_BASE + i:08X}" for i in range(HOT_TAGS)],
        )
        signed = sign_hotlist(hotlist, read_signing_key(signing_key))
        self.client.publish(HOTLIST, signed.to_json(), qos=1, retain=True).wait_for_publish(10)

    def stop(self) -> None:
        """Stop confirming and disconnect."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------------------------------------------------------
# The bridge's process


def process_sample(pid: int) -> tuple[float, float, float]:
    """CPU seconds (user + system, all threads) and VmRSS, VmHWM in MB of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss, hwm = (int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
    return cpu_s, rss, hwm


def runqueue_wait_s(pid: int) -> float:
    """Seconds the bridge's main thread (its event loop) has waited for a core while runnable: what other
    processes on a shared core cost it."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def scrape(port: int) -> dict[str, float]:
    """The bridge's counters from its /metrics, summed over its stations, by sample name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def write_devices(path: Path, count: int, broker: Broker) -> None:
    """The bridge's devices file: one [[device]] block per simulated station."""
    blocks = [
        f'[[device]]\ndevice_id = "{device_id(i)}"\nstation_id = "{station_id(i)}"\ntime_zone = "{TIME_ZONE}"\n'
        f'mqtt_url = "{broker.url}"\n'
        for i in range(count)
    ]
    path.write_text("\n".join(blocks))


def start_bridge(
    workdir: Path, count: int, broker: Broker, public_key: str, core: int | None, profile: Path | None
) -> tuple[subprocess.Popen[bytes], int, int]:
    """The bridge for `count` stations, pinned to `core`; its process, listening port and /metrics port."""
    devices = workdir / "devices.toml"
    write_devices(devices, count, broker)
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "BIKEGUARD_GATEWAY_METRICS_PORT": str(metrics_port),
        "BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY": public_key,
    }
    runner = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    command = [
        sys.executable,
        *runner,
        "-m",
        "gateway",
        "vendor",
        "--listen",
        f"127.0.0.1:{port}",
        "--devices",
        str(devices),
        "--spool-dir",
        str(workdir),
        "--log-level",
        "WARNING",
    ]
    log = (workdir / "bridge.log").open("wb")
    bridge = subprocess.Popen(
        command,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
    )
    log.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if bridge.poll() is not None:
            raise RuntimeError(f"the bridge exited ({bridge.returncode}); see {workdir / 'bridge.log'}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return bridge, port, metrics_port
        time.sleep(0.2)
    raise RuntimeError(f"the bridge did not listen within 120 s; see {workdir / 'bridge.log'}")


# ---------------------------------------------------------------------------------------------------------------
# One step of the ramp


@dataclass
class Step:
    """The figures of one step of the ramp."""

    stations: int
    logged_in: int
    online: int
    offered_rps: float
    acked_rps: float
    taken_rps: float
    cpu_pct: float
    waited_pct: float
    gc_pct: float  # of wall time, the bridge's garbage collector (its /metrics)
    rss_mb: float
    hwm_mb: float
    sim_cpu_pct: float
    ack_s: list[float]
    alert_s: list[float]
    alerts_missing: int
    sighting_s: list[float]
    resent: int
    pending: int
    backlog_growth: int  # reads heard and not yet acknowledged: how much more at the end than at the start
    burst: tuple[float, float, float]  # uploads written per BURST_BIN_S: p99, max and mean over the step
    served: bool = False


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of values, nearest rank; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_step(
    count: int, args: argparse.Namespace, broker: Broker, backend: Backend, public_key: str, cores: list[int]
) -> Step:
    """Start a bridge and `count` stations, warm up, measure, stop both."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-vendor-", dir=args.dir))
    bridge_core, other = (cores[0], set(cores[1:])) if len(cores) > 1 else (None, None)
    profile = workdir / "bridge.prof" if args.profile == count else None
    bridge, port, metrics_port = start_bridge(workdir, count, broker, public_key, bridge_core, profile)
    ctx = mp.get_context("spawn")
    control, child_end = ctx.Pipe()
    hot_per_s = max(1.0, min(args.hot_per_s, count / 10))
    sim = ctx.Process(target=stations_process, args=(child_end, port, count, hot_per_s, other, 5 + count))
    sim.start()
    try:
        deadline = time.monotonic() + 60 + count / 10
        while (logged := ask(control, "report")["logins"]) < count and time.monotonic() < deadline:
            time.sleep(1)
        print(f"{count} stations: {logged} logged in; warming up {args.warmup_s:g} s", file=sys.stderr)
        time.sleep(args.warmup_s)
        control.send("hot")
        # /metrics is answered on the bridge's event loop: when the loop lags, so does the answer; each counter's
        # time is when its answer came (the loop's lag at both ends is alike).
        # Emptied before the first report, which starts the hot reads measured: an alert that came between the two
        # would be taken for missing.
        backend.take()
        first, proc0, t0 = ask(control, "report"), process_sample(bridge.pid), time.time()
        waited0 = runqueue_wait_s(bridge.pid)
        counters0, scraped0 = scrape(metrics_port), time.time()
        time.sleep(args.seconds)
        last, proc1, t1 = ask(control, "report"), process_sample(bridge.pid), time.time()
        waited1 = runqueue_wait_s(bridge.pid)
        counters1, scraped1 = scrape(metrics_port), time.time()
        time.sleep(2)  # alerts of the last uploads still on their way
        alerts, sighting_s = backend.take()
        with backend.lock:  # before the bridge stops: then every station says offline
            online = sum(backend.online.get(station_id(i), False) for i in range(count))
        if bridge.poll() is not None:
            raise RuntimeError(f"the bridge exited ({bridge.returncode}); see {workdir / 'bridge.log'}")
    finally:
        with contextlib.suppress(BrokenPipeError, EOFError):
            ask(control, "stop", timeout_s=60)
        sim.join(30)
        stop_process(bridge, timeout_s=120)
    wall = t1 - t0
    received_by_tag: defaultdict[int, list[float]] = defaultdict(list)
    for (_station, tag), at in alerts.items():
        received_by_tag[tag].append(at)
    alert_s, missing = [], 0
    for tag, written_at in last["hot_written"].items():
        received = [at for at in received_by_tag[tag] if at >= written_at]
        if received:
            alert_s.append(min(received) - written_at)
        else:
            missing += 1
    taken = counters1.get("bikeguard_gateway_frames_decoded_total", 0) - counters0.get(
        "bikeguard_gateway_frames_decoded_total", 0
    )
    step = Step(
        stations=count,
        logged_in=last["logins"],
        online=online,
        offered_rps=(last["heard"] - first["heard"]) / (last["at"] - first["at"]),
        acked_rps=(last["acked"] - first["acked"]) / (last["at"] - first["at"]),
        taken_rps=taken / (scraped1 - scraped0),
        cpu_pct=100 * (proc1[0] - proc0[0]) / wall,
        waited_pct=100 * (waited1 - waited0) / wall,
        gc_pct=100 * (counters1.get(GC_SECONDS, 0) - counters0.get(GC_SECONDS, 0)) / (scraped1 - scraped0),
        rss_mb=proc1[1],
        hwm_mb=proc1[2],
        sim_cpu_pct=100 * (last["cpu_s"] - first["cpu_s"]) / (last["at"] - first["at"]),
        ack_s=last["ack_s"],
        alert_s=alert_s,
        alerts_missing=missing,
        sighting_s=[d for d in sighting_s if d == d],
        resent=last["resent"] - first["resent"],
        pending=last["pending"],
        backlog_growth=(last["heard"] - last["acked"]) - (first["heard"] - first["acked"]),
        burst=burstiness(last["upload_bins"]),
    )
    step.served = (
        step.logged_in == step.online == count
        and step.backlog_growth <= READS_PER_S * count  # less than a second of reads: a window's edges, not lag
        and step.resent == 0
        and step.cpu_pct < 95
        and step.alerts_missing == 0
    )
    if profile is not None and profile.exists():
        print_profile(profile)
    shutil.rmtree(workdir, ignore_errors=True)
    return step


def burstiness(bins: Counter[int]) -> tuple[float, float, float]:
    """Uploads written per bin: p99, max and mean over the whole bins between the first and the last (those two
    are partial), the empty ones counted."""
    if len(bins) < 3:
        return float("nan"), float("nan"), float("nan")
    counts = [float(bins.get(b, 0)) for b in range(min(bins) + 1, max(bins))]
    return pct(counts, 99), max(counts), sum(counts) / len(counts)


def ask(control: Connection, command: str, timeout_s: float = 30) -> Any:
    """Send a command to the stations' process and wait for its answer."""
    control.send(command)
    if not control.poll(timeout_s):
        raise RuntimeError(f"the stations' process did not answer {command!r} within {timeout_s} s")
    return control.recv()


def print_profile(path: Path) -> None:
    """The bridge's hottest functions (cProfile of its event loop thread)."""
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


# ---------------------------------------------------------------------------------------------------------------
# The machine's limits, measured in the same run


def decoder_limit(uploads: int = 5_000, chunk: int = 4096) -> float:
    """The bare Mr7901Decoder on this core: reads/s decoded from uploads of READS_PER_S reads in `chunk` reads."""
    rng = random.Random(3)
    at = datetime(2026, 11, 29, 12, 0, 0)
    frames = [
        encode(
            TagUpload(
                device_id(0),
                n,
                tuple(
                    TagRead(0, 2, rng.randrange(1 << 31), 0, n & 0xFFFF, 0, -70, at + timedelta(seconds=n))
                    for _ in range(READS_PER_S)
                ),
            )
        )
        for n in range(uploads)
    ]
    stream = b"".join(frames)
    decoder = Mr7901Decoder()
    t = time.perf_counter()
    reads = 0
    for start in range(0, len(stream), chunk):
        for message in decoder.feed(stream[start : start + chunk]):
            reads += len(message.reads) if isinstance(message, TagUpload) else 0
    seconds = time.perf_counter() - t
    assert reads == uploads * READS_PER_S
    return reads / seconds


def commit_limit(directory: str | None) -> float:
    """fsync'd SQLite commits/s (WAL, synchronous=FULL, a commit each) on the spools' disk, as bench/spool.py."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-vendor-sqlite-", dir=directory))
    try:
        inserts, _ = sqlite_limits(workdir / "limit.db", [os.urandom(300) for _ in range(3000)], 100)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return inserts


def ms(values: list[float], q: float) -> str:
    """A percentile in milliseconds, for the table."""
    value = pct(values, q)
    return "-" if value != value else f"{1000 * value:,.0f}"


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="100,250,500,1000", help="stations at each step of the ramp")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time of each step")
    parser.add_argument("--warmup-s", type=float, default=25.0, help="time after every station logged in")
    parser.add_argument("--hot-per-s", type=float, default=10.0, help="hot-listed reads a second, fleet-wide")
    parser.add_argument("--quick", action="store_true", help="a short ramp of a few tens of stations")
    parser.add_argument("--broker", default="auto", choices=("auto", "mosquitto", "amqtt"))
    parser.add_argument("--dir", default=None, help="where the spools go (the station's disk; default a temp dir)")
    parser.add_argument("--profile", type=int, default=None, help="cProfile the bridge at this step")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.seconds, args.warmup_s = "10,40", min(args.seconds, 8.0), min(args.warmup_s, 12.0)
    steps = [int(s) for s in args.steps.split(",")]

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1:
        os.sched_setaffinity(0, set(cores[1:]))  # this process, the broker and the stations: off the bridge's core
    decoder = max(decoder_limit() for _ in range(3))
    commits = commit_limit(args.dir)
    print(
        f"limits: bare Mr7901Decoder {decoder:,.0f} reads/s on one core (uploads of {READS_PER_S} reads, 4 KiB"
        f" reads, best of 3); {commits:,.0f} fsync'd SQLite commits/s on the spools' disk (WAL, synchronous=FULL)"
    )
    print(
        f"cores: bridge on core {cores[0]}, stations + broker + stand-in backend on {cores[1:]}"
        if len(cores) > 1
        else "one core only: nothing pinned"
    )
    signing_key = generate_signing_key()
    broker = start_broker(args.broker)
    backend = Backend(broker)
    results: list[Step] = []
    try:
        backend.publish_hotlist(signing_key)
        for count in steps:
            results.append(run_step(count, args, broker, backend, public_key_of(signing_key), cores))
            print_step(results[-1])
    finally:
        backend.stop()
        broker.stop()
    print_summary(results, broker.kind, decoder, commits)
    return 0


def print_step(s: Step) -> None:
    """One step's line, as it ends (on stderr: the table comes at the end)."""
    print(
        f"  {s.stations} stations: {s.taken_rps:,.0f} reads/s, {s.cpu_pct:.0f} % of the core, alert p99"
        f" {ms(s.alert_s, 99)} ms, ack p99 {ms(s.ack_s, 99)} ms, {'served' if s.served else 'NOT served'}",
        file=sys.stderr,
    )


def taken(s: Step) -> str:
    """Reads/s the bridge's own counter says it took (its /metrics sum can go back when a station is missing)."""
    return f"{s.taken_rps:,.0f}" if s.taken_rps >= 0 else "n/a (the counter went back)"


def print_summary(results: list[Step], broker_kind: str, decoder: float, commits: float) -> None:
    """The table of every step, the verdict and the last line."""
    print(
        f"broker {broker_kind}; each station {READS_PER_S} reads/s ({TAGS_IN_RANGE} tags in range, one beacon every"
        f" {BEACON_INTERVAL_S} s, staying {2 * STAY_BEACONS[0]}-{2 * STAY_BEACONS[1]} s); passage gap"
        f" {PASSAGE_GAP_S:g} s"
    )
    print(
        "stations | logged in / online | reads/s heard / acked / taken by the bridge | bridge core (waited for it)"
        " | of it GC | RSS (peak) MB"
        " | upload->ack p50/p99 ms | read->alert p50/p99 ms (n, missing) | sighting after gap p50/p99 ms"
        " | resent | backlog growth (reads) | stations' core"
        f" | uploads written per {1000 * BURST_BIN_S:.0f} ms p99 / max (mean)"
    )
    for s in results:
        print(
            f"{s.stations} | {s.logged_in} / {s.online} | {s.offered_rps:,.0f} / {s.acked_rps:,.0f} /"
            f" {taken(s)} | {s.cpu_pct:.0f} % ({s.waited_pct:.0f} %) | {s.gc_pct:.1f} %"
            f" | {s.rss_mb:.0f} ({s.hwm_mb:.0f})"
            f" | {ms(s.ack_s, 50)} / {ms(s.ack_s, 99)} | {ms(s.alert_s, 50)} / {ms(s.alert_s, 99)}"
            f" ({len(s.alert_s)}, {s.alerts_missing})"
            f" | {ms(s.sighting_s, 50)} / {ms(s.sighting_s, 99)} | {s.resent} | {s.backlog_growth:,}"
            f" | {s.sim_cpu_pct:.0f} % | {s.burst[0]:.0f} / {s.burst[1]:.0f} ({s.burst[2]:.0f})"
        )
    served = [s for s in results if s.served]
    top = max(served, key=lambda s: s.stations) if served else None
    for s in results:
        if s.acked_rps > 0:
            # Per read acknowledged: the bridge's own counter is read through its event loop, late when it lags.
            print(
                f"{s.stations} stations: the bridge spends {1e6 * s.cpu_pct / 100 / s.acked_rps:,.0f} us of CPU a"
                f" read acknowledged (bare decoder {1e6 / decoder:.1f} us); its spools commit at least once a"
                f" station a second, {s.stations}/s, {100 * s.stations / commits:.0f} % of the disk's"
                f" {commits:,.0f} fsync'd commits/s"
            )
    target = next((s for s in results if s.stations >= 1000), None)
    if target is not None:
        met = target.served and pct(target.alert_s, 99) < 0.050
        print(
            f"target: 1,000 stations with read->publish p99 under 50 ms: {'met' if met else 'NOT met'}"
            f" ({target.stations} stations: {'served' if target.served else 'not served'},"
            f" alert p99 {ms(target.alert_s, 99)} ms)"
        )
    if top is None:
        print("vendor bridge: no step served on one core")
        return
    print(
        f"vendor bridge: {top.stations} stations served on one core ({top.taken_rps:,.0f} reads/s,"
        f" {top.cpu_pct:.0f} % of the core); alert p99 {ms(top.alert_s, 99)} ms at {top.stations} stations"
    )


if __name__ == "__main__":
    sys.exit(main())
