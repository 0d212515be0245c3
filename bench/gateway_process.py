"""Gateway benchmark: one station's gateway process reading its pty, at a busy intersection and at line speed.

The real `python -m gateway` runs as a process of its own, reading the pty of a simulated radio module
(firmware_sim: real frames, paced at 115200 baud, status frame every 10 s) and publishing to a real broker
(Mosquitto when installed, else the embedded amqtt), where a stand-in backend confirms each batch as the ingest
does. Two loads, each measured over --seconds after a warm-up:

- busy: --tags tags in range (default 500), each beaconing every 1-3 s (firmware_sim.tag: nominal 1-3 s with
  jitter), as at a busy intersection;
- line max: the module's line kept full, so frames arrive at the serial line's maximum rate;
- noisy line max: the same with --noise of the frames garbled (a bit flipped) and as many with line noise before
  them, so the gateway also writes what it rejects to its rejected-runs file.

For each: frames/s the gateway decoded (its own /metrics counter) beside the frames the module put on the line,
the share of one core the gateway process used (utime + stime from /proc/<pid>/stat over the wall time) and its
resident memory (VmRSS, and VmHWM, the peak, from /proc/<pid>/status). Beside them, the limits measured in the
same run: the serial line's maximum frame rate at its baud rate, and the frame decoder's raw speed in-process.
Target (issue 10): under 60 MB RSS and under 10 % of one core at 500 tags. Last line:

    gateway: <N> tags -> <F> frames/s, <C> % of one core, <R> MB RSS (peak <P> MB); line max: <F2> of <L> frames/s,
    <C2> % of one core

(Named gateway_process.py, not gateway.py: a script's folder comes first on sys.path, and a bench/gateway.py
would hide the gateway package from the other benchmarks.)

Run: python bench/gateway_process.py [--tags 500] [--seconds 30] [--warmup-s 5] [--broker auto|mosquitto|amqtt]
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from bikeguard.services import Broker, free_port, start_broker, stop_process
from firmware_sim.radio import BITS_PER_BYTE, RadioModule
from firmware_sim.tag import MAX_INTERVAL_S, MIN_INTERVAL_S, Tag
from protocol.frames import BAUD_RATE, Beacon, FrameDecoder, TagFlags, encode
from protocol.messages import CONFIRMATION_MAX_SEQS, Confirmation, utcnow
from protocol.topics import confirmations_topic, station_topic

STATION = "st-bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BEACON_FRAME_BYTES = len(encode(Beacon(0, 0, TagFlags(0), -70, 0)))


class Confirmer:
    """The backend's part: receive the station's batches and confirm them, gathered every flush interval."""

    def __init__(self, broker: Broker, flush_interval_s: float = 0.05) -> None:
        self.flush_interval_s = flush_interval_s
        self.received = 0
        self._seqs: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-confirmer-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.username_pw_set(broker.username, broker.password)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(station_topic(STATION, "sightings"), qos=1)
        if not subscribed.wait(10):
            raise RuntimeError("the confirmer's subscription was not acknowledged")
        self._thread = threading.Thread(target=self._flushes, name="confirmer", daemon=True)
        self._thread.start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        seq = orjson.loads(msg.payload)["batch_seq"]
        with self._lock:
            self._seqs.append(seq)
            self.received += 1

    def _flushes(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
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


@dataclass
class Sample:
    """The gateway process at one moment: its CPU time, memory and counters."""

    at: float
    cpu_s: float
    rss_mb: float
    hwm_mb: float
    decoded: float
    rejected: float
    dropped: float
    kept: float  # rejected runs written to the rejected-runs file
    queued: int  # frames the module put on its line so far


def process_sample(pid: int) -> tuple[float, float, float]:
    """CPU seconds (user + system, all threads) and VmRSS, VmHWM in MB of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 is fields[0]
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss, hwm = (int(status[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))
    return cpu_s, rss, hwm


def scrape(port: int) -> dict[str, float]:
    """The gateway's counters from its /metrics, by sample name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def sample(pid: int, metrics_port: int, module: RadioModule) -> Sample:
    """The gateway process and its counters now."""
    counters = scrape(metrics_port)
    cpu_s, rss, hwm = process_sample(pid)
    return Sample(
        time.perf_counter(),
        cpu_s,
        rss,
        hwm,
        counters.get("bikeguard_gateway_frames_decoded_total", 0.0),
        counters.get("bikeguard_gateway_frames_rejected_total", 0.0),
        counters.get("bikeguard_gateway_frames_dropped_total", 0.0),
        counters.get("bikeguard_gateway_rejected_runs_written_total", 0.0),
        module.stats.frames_queued,
    )


class Crowd:
    """Tags in range of the station, each beaconing on its own schedule (firmware_sim.tag)."""

    def __init__(self, tags: int, rng: random.Random, now_s: float) -> None:
        self.rng = rng
        self.tags = [
            Tag(0x10000 + i, rng, interval_s=rng.uniform(MIN_INTERVAL_S, MAX_INTERVAL_S), now_s=now_s)
            for i in range(tags)
        ]
        self.heap = [(t.next_beacon_at_s, i) for i, t in enumerate(self.tags)]
        heapq.heapify(self.heap)
        self.lost = 0

    def hear(self, module: RadioModule, now_s: float) -> None:
        """Hand the module every beacon sent up to now_s."""
        while self.heap[0][0] <= now_s:
            _, i = heapq.heappop(self.heap)
            tag = self.tags[i]
            for sent in tag.poll(now_s):
                beacon = Beacon(
                    sent.tag_id, sent.counter, sent.flags, self.rng.randint(-95, -45), self.rng.randint(0, 1)
                )
                if not module.hear(beacon):
                    self.lost += 1
            heapq.heappush(self.heap, (tag.next_beacon_at_s, i))


def fill_line(module: RadioModule, rng: random.Random, tags: int, state: list[int]) -> None:
    """Queue beacons until the module's line is full (it refuses the next): the line's maximum rate."""
    while True:
        state[0] = (state[0] + 1) % tags
        tag = 0x20000 + state[0]
        if not module.send(Beacon(tag, state[1] & 0xFFFF, TagFlags(0), rng.randint(-95, -45), 0)):
            return
        state[1] += 1


def run_phase(
    name: str,
    pid: int,
    metrics_port: int,
    module: RadioModule,
    feed: Callable[[float], None],
    warmup_s: float,
    seconds: float,
) -> tuple[Sample, Sample]:
    """Drive the module with `feed(now_s)` for warmup_s + seconds; samples at the start and end of the measure."""
    t0 = time.perf_counter()
    first: Sample | None = None
    tick = 0.01
    while (elapsed := time.perf_counter() - t0) < warmup_s + seconds:
        feed(elapsed)
        if first is None and elapsed >= warmup_s:
            first = sample(pid, metrics_port, module)
        time.sleep(tick)
    last = sample(pid, metrics_port, module)
    assert first is not None
    print(f"{name}: measured {last.at - first.at:.1f} s after a {warmup_s:g} s warm-up", file=sys.stderr)
    return first, last


def rates(first: Sample, last: Sample) -> tuple[float, float, float, float]:
    """Frames/s decoded, frames/s put on the line, share of one core (%), rejected + dropped in the window."""
    wall = last.at - first.at
    return (
        (last.decoded - first.decoded) / wall,
        (last.queued - first.queued) / wall,
        100 * (last.cpu_s - first.cpu_s) / wall,
        (last.rejected - first.rejected) + (last.dropped - first.dropped),
    )


def decoder_limit(frames: int = 200_000, chunk: int = 4096) -> float:
    """The frame decoder's raw speed in-process: frames/s decoded from reads of `chunk` bytes."""
    rng = random.Random(3)
    stream = b"".join(encode(Beacon(rng.randrange(1 << 32), i & 0xFFFF, TagFlags(0), -70, 0)) for i in range(frames))
    decoder = FrameDecoder()
    t = time.perf_counter()
    for start in range(0, len(stream), chunk):
        decoder.feed(stream[start : start + chunk])
    seconds = time.perf_counter() - t
    assert decoder.frames == frames
    return frames / seconds


def wait_until_reading(pid: int, metrics_port: int, module: RadioModule, timeout_s: float = 30.0) -> None:
    """Until the gateway answers on /metrics and has decoded a frame (its port is open)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if scrape(metrics_port).get("bikeguard_gateway_frames_decoded_total", 0) > 0:
                return
        except OSError:
            pass  # not listening yet
        module.hear(Beacon(0xFFFF, 0, TagFlags(0), -70, 0))
        time.sleep(0.1)
    raise RuntimeError(f"the gateway (pid {pid}) did not start reading its port within {timeout_s} s")


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tags", type=int, default=500, help="tags in range at the busy intersection")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time of each load")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="time before each measure starts")
    parser.add_argument("--line-tags", type=int, default=2000, help="distinct tags in the line-max load")
    parser.add_argument("--noise", type=float, default=0.05, help="share of frames garbled in the noisy load")
    parser.add_argument("--broker", default="auto", choices=("auto", "mosquitto", "amqtt"))
    args = parser.parse_args()

    line_bytes_s = BAUD_RATE / BITS_PER_BYTE
    line_max = line_bytes_s / BEACON_FRAME_BYTES
    raw_decoder = max(decoder_limit() for _ in range(3))  # best of 3: it is a limit
    print(
        f"limits: serial line {BAUD_RATE} baud = {line_bytes_s:,.0f} bytes/s = {line_max:,.0f} beacon frames/s"
        f" ({BEACON_FRAME_BYTES} bytes each); frame decoder in-process {raw_decoder:,.0f} frames/s (best of 3)"
    )
    broker = start_broker(args.broker)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    confirmer = Confirmer(broker)
    module = RadioModule(rng=random.Random(7))
    metrics_port = free_port()
    log = (workdir / "gateway.log").open("wb")
    env = {**os.environ, "BIKEGUARD_GATEWAY_METRICS_PORT": str(metrics_port)}
    command = [
        "--station-id",
        STATION,
        "--serial",
        module.port,
        "--mqtt",
        broker.url,
        "--spool",
        str(workdir / "s.spool"),
    ]
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", *command, "--log-level", "WARNING"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        module.start()
        wait_until_reading(gateway.pid, metrics_port, module)
        idle = run_phase("idle", gateway.pid, metrics_port, module, lambda _now_s: None, 1.0, min(args.seconds, 10.0))

        rng = random.Random(11)
        crowd = Crowd(args.tags, rng, 0.0)
        busy = run_phase(
            f"busy ({args.tags} tags)",
            gateway.pid,
            metrics_port,
            module,
            lambda now_s: crowd.hear(module, now_s),
            args.warmup_s,
            args.seconds,
        )
        state = [0, 0]
        line = run_phase(
            "line max",
            gateway.pid,
            metrics_port,
            module,
            lambda _now_s: fill_line(module, rng, args.line_tags, state),
            args.warmup_s,
            args.seconds,
        )
        module.corrupt_rate = module.garbage_rate = args.noise
        noisy = run_phase(
            "noisy line max",
            gateway.pid,
            metrics_port,
            module,
            lambda _now_s: fill_line(module, rng, args.line_tags, state),
            args.warmup_s,
            args.seconds,
        )
        if gateway.poll() is not None:
            raise RuntimeError(f"the gateway exited ({gateway.returncode}); see {workdir / 'gateway.log'}")
    finally:
        module.close()
        stop_process(gateway)
        confirmer.stop()
        broker.stop()
        log.close()
    shutil.rmtree(workdir, ignore_errors=True)  # kept when the run failed: its gateway.log says why

    *_, idle_cpu, _ = rates(*idle)
    idle_rss = idle[1].rss_mb
    print(f"idle (connected, only the module's status frames): {idle_cpu:.1f} % of one core, {idle_rss:.1f} MB RSS")
    decoded, offered, cpu, lost = rates(*busy)
    rss, hwm = busy[1].rss_mb, busy[1].hwm_mb
    print(
        f"busy intersection, {args.tags} tags beaconing every {MIN_INTERVAL_S:g}-{MAX_INTERVAL_S:g} s"
        f" ({broker.kind}): {decoded:,.0f} frames/s decoded of {offered:,.0f} put on the line"
        f" ({100 * offered / line_max:.0f} % of the line; {lost:.0f} rejected or dropped, {crowd.lost} refused by the"
        f" module), {cpu:.1f} % of one core, {rss:.1f} MB RSS (peak {hwm:.1f} MB);"
        f" {confirmer.received:,} batches confirmed"
    )
    line_decoded, line_offered, line_cpu, line_lost = rates(*line)
    print(
        f"line max, {args.line_tags} tags: {line_decoded:,.0f} frames/s decoded of {line_offered:,.0f} put on the line"
        f" (limit {line_max:,.0f}; {line_lost:.0f} rejected or dropped), {line_cpu:.1f} % of one core,"
        f" {line[1].rss_mb:.1f} MB RSS (peak {line[1].hwm_mb:.1f} MB);"
        f" each frame costs the gateway {line_cpu / 100 / line_decoded * 1e6:,.0f} us of CPU"
        f" against {1e6 / raw_decoder:.1f} us in the bare decoder"
    )
    noisy_decoded, noisy_offered, noisy_cpu, noisy_lost = rates(*noisy)
    wall = noisy[1].at - noisy[0].at
    print(
        f"noisy line max, {100 * args.noise:g} % of frames garbled and {100 * args.noise:g} % after line noise:"
        f" {noisy_decoded:,.0f} frames/s decoded, {noisy_lost / wall:,.0f} runs/s rejected and"
        f" {(noisy[1].kept - noisy[0].kept) / wall:,.0f} runs/s written to the rejected-runs file,"
        f" {noisy_cpu:.1f} % of one core, {noisy[1].rss_mb:.1f} MB RSS (peak {noisy[1].hwm_mb:.1f} MB)"
    )
    verdict = "meets" if cpu < 10 and hwm < 60 else "misses"
    print(f"target at {args.tags} tags: under 10 % of one core and under 60 MB RSS: {verdict} it")
    print(
        f"gateway: {args.tags} tags -> {decoded:,.0f} frames/s, {cpu:.1f} % of one core, {rss:.1f} MB RSS"
        f" (peak {hwm:.1f} MB); line max: {line_decoded:,.0f} of {line_max:,.0f} frames/s, {line_cpu:.1f} % of one core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
