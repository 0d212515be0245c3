"""The gateway keeps what it rejects: every refused byte run from the pty lands in a bounded file with its bytes,
time, reason and station; the sightings around it go on; the installer reads them with `bikeguard gateway rejected`
and at the station's `/rejected`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from bikeguard.services import Broker, free_port
from gateway.radio import Radio
from gateway.rejected_runs import RejectedRun, RejectedRunsFile, parse_since, previous_path, read_runs
from gateway.settings import GatewaySettings
from gateway.station import Station, run_fleet
from protocol.frames import SYNC, CrcError, GarbageError, crc16, encode
from protocol.messages import SightingBatch, utcnow
from tests.gateway.harness import FakeModule, beacon, eventually, fast_settings, running, watching

pytestmark = pytest.mark.anyio


def unknown_type_frame(frame_type: int = 0x7F, payload: bytes = b"\x01\x02") -> bytes:
    """A frame with a valid CRC and a type the decoder does not know."""
    head = bytes([1 + len(payload), frame_type]) + payload
    return SYNC + head + crc16(head).to_bytes(2, "big")


def corrupt(frame: bytes, byte: int = 6) -> bytes:
    """The frame with one bit flipped: its CRC no longer matches."""
    flipped = bytearray(frame)
    flipped[byte] ^= 0x01
    return bytes(flipped)


def merged(runs: list[RejectedRun]) -> list[tuple[str, str]]:
    """(reason, hex) of each run, consecutive garbage runs joined: where a read of the port ends cuts garbage in two
    (the first byte of a burst wakes the reader on its own), as a real serial line's timing does."""
    out: list[tuple[str, str]] = []
    for run in runs:
        if out and run.reason == "garbage" == out[-1][0]:
            out[-1] = ("garbage", out[-1][1] + run.raw_hex)
        else:
            out.append((run.reason, run.raw_hex))
    return out


def runs_in(path: Path, count: int) -> list[RejectedRun] | None:
    """The runs kept in a file, once there are at least `count`."""
    runs = list(read_runs(path))
    return runs if len(runs) >= count else None


@contextlib.asynccontextmanager
async def reading(radio: Radio) -> AsyncIterator[Radio]:
    """A radio reading its pty in the background; stopped (its file written and closed) on the way out."""
    task = asyncio.create_task(radio.run())
    try:
        await eventually(lambda: radio.opened, what="port open")
        yield radio
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_rejected_runs_land_in_the_file_with_their_bytes_and_reasons_and_the_sightings_between_are_kept(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    settings = fast_settings(topic_prefix, module.path, broker.url, tmp_path / "s.spool")
    path = tmp_path / f"rejected-runs-{topic_prefix}.jsonl"
    assert settings.rejected_runs_file == path  # beside the spool, named after the station
    bad_crc = corrupt(encode(beacon(0x0B)))
    unknown = unknown_type_frame()
    before = utcnow()
    async with watching(broker, topic_prefix) as watcher, running(Station(settings)):
        module.send_raw(
            b"\x01\x02\x03"
            + encode(beacon(0x0A))
            + bad_crc
            + encode(beacon(0x0C))
            + unknown
            + encode(beacon(0x0D))
            + b"\xde\xad"
        )
        runs = await eventually(
            lambda: (runs := runs_in(path, 4)) and len(merged(runs)) == 4 and runs, what="4 rejected runs in the file"
        )

        def seen_tags() -> set[str] | None:
            tags = {s.tag_id for b in watcher.of("sightings") for s in SightingBatch.parse(b).sightings}
            return tags if len(tags) >= 3 else None

        seen = await eventually(seen_tags, what="the three valid beacons' sightings")
    after = utcnow()

    assert seen == {"0000000A", "0000000C", "0000000D"}
    assert merged(runs) == [
        ("garbage", "010203"),
        ("crc", bad_crc.hex()),
        ("unknown_type", unknown.hex()),
        ("garbage", "dead"),
    ]
    assert {r.station_id for r in runs} == {topic_prefix}
    assert all(before <= r.at <= after for r in runs)
    assert [r.detail for r in runs if r.reason != "garbage"] == ["CRC mismatch", "unknown frame type 0x7f"]
    assert not any(r.truncated for r in runs) and sum(r.length for r in runs) == 3 + len(bad_crc) + len(unknown) + 2


async def test_the_file_is_rotated_to_one_previous_file_and_a_long_run_is_cut_with_its_length_kept(
    module: FakeModule, tmp_path: Path
) -> None:
    path = tmp_path / "rejected.jsonl"
    kept = RejectedRunsFile(path, "st-rot", max_bytes=4096, run_max_bytes=8)
    radio = Radio(module.path, 115200, read_timeout_s=0.05, rejected_runs=kept)
    async with reading(radio):
        for tag in range(199):
            module.send_raw(corrupt(encode(beacon(tag))) + encode(beacon(tag)))
        # No 0xAA in the 100 bytes of garbage: one run, cut. In the write of a frame, so that the read which the
        # write's first byte wakes does not cut it in two.
        module.send_raw(corrupt(encode(beacon(199))) + encode(beacon(199)) + bytes(range(1, 101)) + encode(beacon(999)))
        received = 0
        async with asyncio.timeout(15):
            while received < 201:
                await radio.get()
                received += 1
        await eventually(lambda: kept.written >= 201, what="201 runs written")

    assert path.stat().st_size <= 4096 and previous_path(path).stat().st_size <= 4096
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rejected.jsonl", "rejected.jsonl.1"]
    assert kept.rotations >= 2 and kept.unsaved == 0
    runs = list(read_runs(path))
    # The newest runs are the ones kept, in order: the last corrupt frames, then the long garbage run.
    assert runs[-2].raw_hex == corrupt(encode(beacon(199))).hex()[:16] and runs[-2].truncated
    garbage = runs[-1]
    assert (garbage.reason, garbage.length, garbage.truncated) == ("garbage", 100, True)
    assert garbage.raw_hex == bytes(range(1, 9)).hex()
    assert [r.at for r in runs] == sorted(r.at for r in runs)


async def test_a_full_disk_is_counted_and_logged_and_the_sightings_go_on(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = tmp_path / "rejected.jsonl"
    full.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full SD card
    settings = fast_settings(topic_prefix, module.path, broker.url, tmp_path / "s.spool", rejected_runs_path=full)
    station = Station(settings)
    with caplog.at_level(logging.WARNING, logger="gateway.rejected_runs"):
        async with watching(broker, topic_prefix) as watcher, running(station):
            module.send_raw(b"\x01\x02\x03" + encode(beacon(0x21)))
            await watcher.wait("sightings")
            assert station.radio is not None and station.radio.rejected_runs is not None
            kept = station.radio.rejected_runs
            await eventually(lambda: kept.write_errors >= 1, what="the refused write counted")
            module.send_raw(corrupt(encode(beacon(0x22))) + encode(beacon(0x23)))
            await eventually(lambda: kept.write_errors >= 2, what="the next refused write counted")
            batches = await eventually(
                lambda: [b for b in watcher.of("sightings") if "00000023" in b.decode()], what="the later sighting"
            )
            assert batches
            assert station.figures().counters["rejected_runs_unsaved"] == kept.unsaved >= 2
            assert kept.written == 0
    assert "rejected runs not written" in caplog.text and "No space left on device" in caplog.text


def run_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m gateway rejected …` as the installer types it on the station."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "rejected", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def kept_runs(module: FakeModule, path: Path, station_id: str, data: bytes, count: int) -> list[RejectedRun]:
    """Have the gateway's radio read `data` from the pty and keep its `count` rejected runs in `path`."""
    kept = RejectedRunsFile(path, station_id, max_bytes=1 << 20, run_max_bytes=256)
    async with reading(Radio(module.path, 115200, read_timeout_s=0.05, rejected_runs=kept)):
        module.send_raw(data)
        await eventually(lambda: kept.written >= count, what=f"{count} runs written")
    return list(read_runs(path))


async def test_the_rejected_command_prints_a_stations_runs_from_its_settings_and_filters_by_time(
    module: FakeModule, tmp_path: Path
) -> None:
    spool = tmp_path / "st-cli.spool"
    bad_crc = corrupt(encode(beacon(0x31)))
    runs = await kept_runs(
        module,
        tmp_path / "rejected-runs-st-cli.jsonl",
        "st-cli",
        encode(beacon(1)) + b"\x05\x06" + bad_crc + encode(beacon(1)),
        2,
    )
    assert [r.reason for r in runs] == ["garbage", "crc"]
    # As configured for the gateway: station and spool from its environment (no serial port needed).
    env = {"BIKEGUARD_GATEWAY_STATION_ID": "st-cli", "BIKEGUARD_GATEWAY_SPOOL_PATH": str(spool)}

    shown = run_command(env=env)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 3
    assert "st-cli  garbage" in lines[0] and " 2 B  05 06  (bytes outside any frame)" in lines[0]
    assert "st-cli  crc" in lines[1] and bad_crc.hex(" ") in lines[1] and "(CRC mismatch)" in lines[1]
    assert lines[2].startswith("2 rejected run(s) of station st-cli in") and lines[2].endswith(": garbage 1, crc 1")

    as_json = run_command("--station", "st-cli", "--spool", str(spool), "--since", "1h", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert [orjson.loads(line)["raw_hex"] for line in as_json.stdout.splitlines()] == ["0506", bad_crc.hex()]

    later = (runs[-1].at + timedelta(seconds=1)).isoformat()
    assert run_command("--since", later, env=env).stdout.splitlines() == [
        f"0 rejected run(s) of station st-cli in {spool.parent / 'rejected-runs-st-cli.jsonl'} and "
        "rejected-runs-st-cli.jsonl.1"
    ]
    refused = run_command("--since", "yesterday", env=env)
    assert refused.returncode == 2 and "not a time" in refused.stderr


def test_since_is_an_iso_time_or_an_age() -> None:
    now = datetime.fromisoformat("2026-11-29T12:00:00+00:00")
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-11-29T10:00:00Z", now) == now - timedelta(hours=2)
    assert parse_since("2026-11-29T10:00:00", now) == now - timedelta(hours=2)  # UTC unless it says
    for bad in ("", "h", "-1h", "soon", "12x"):
        with pytest.raises(ValueError, match="not a time"):
            parse_since(bad, now)


def get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET (an HTTP error's too)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_a_stations_http_port_serves_its_rejected_runs_as_json_lines_beside_its_metrics(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    other = FakeModule()
    settings = [
        fast_settings(topic_prefix, module.path, broker.url, tmp_path / "a.spool", metrics_port=port),
        fast_settings(f"{topic_prefix}b", other.path, broker.url, tmp_path / "b.spool", metrics_port=port),
    ]
    url = f"http://127.0.0.1:{port}"
    task = asyncio.create_task(run_fleet(settings))
    try:
        async with watching(broker, topic_prefix) as watcher:
            await watcher.wait("status")

            def sent() -> list[RejectedRun] | None:
                # The port may not be open yet (pyserial flushes what came before): send until a run is kept.
                module.send_raw(encode(beacon(0x41)) + b"\x07\x08" + encode(beacon(0x41)))
                other.send_raw(encode(beacon(0x42)) + b"\x09" + encode(beacon(0x42)))
                return runs_in(settings[0].rejected_runs_file, 1) and runs_in(settings[1].rejected_runs_file, 1)

            await eventually(sent, what="a run kept by each station", interval_s=0.2)
            status, body = await asyncio.to_thread(get, f"{url}/rejected?station={topic_prefix}")
            assert status == 200
            mine = [orjson.loads(line) for line in body.splitlines()]
            assert mine and {(r["station_id"], r["reason"], r["raw_hex"]) for r in mine} == {
                (topic_prefix, "garbage", "0708")
            }

            status, body = await asyncio.to_thread(get, f"{url}/rejected")
            both = [orjson.loads(line) for line in body.splitlines()]
            assert status == 200 and {r["station_id"] for r in both} == {topic_prefix, f"{topic_prefix}b"}
            times = [datetime.fromisoformat(r["at"]) for r in both]
            assert times == sorted(times)  # merged, oldest first

            future = (utcnow() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
            assert await asyncio.to_thread(get, f"{url}/rejected?since={future}") == (200, b"")
            status, body = await asyncio.to_thread(get, f"{url}/rejected?station=nobody")
            assert status == 404 and b"no station nobody" in body
            status, body = await asyncio.to_thread(get, f"{url}/rejected?since=soon")
            assert status == 400 and b"not a time" in body

            status, body = await asyncio.to_thread(get, f"{url}/metrics")
            assert status == 200
            written = f'bikeguard_gateway_rejected_runs_written_total{{station="{topic_prefix}"}}'
            assert written in body.decode()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        other.close()


def test_rejected_run_settings_default_beside_the_spool_and_are_bounded() -> None:
    settings = GatewaySettings(station_id="st-9", serial_url="/dev/null", spool_path=Path("/var/lib/bg/st-9.spool"))
    assert settings.rejected_runs_file == Path("/var/lib/bg/rejected-runs-st-9.jsonl")
    assert (settings.rejected_runs_max_bytes, settings.rejected_run_max_bytes) == (1 << 20, 256)
    with pytest.raises(ValueError, match="rejected_runs_max_bytes"):
        GatewaySettings(station_id="st-9", serial_url="/dev/null", rejected_runs_max_bytes=10)


def test_a_station_with_nothing_rejected_has_no_writer_thread_and_its_first_run_starts_one(tmp_path: Path) -> None:
    # A vendor bridge runs a thousand stations, most of them with a clean line: a thread each would be a thousand
    # idle threads in one process.
    path = tmp_path / "rejected.jsonl"
    runs = RejectedRunsFile(path, "st-1", max_bytes=1 << 20, run_max_bytes=64)
    runs.start()
    try:
        assert not runs.writing
        assert not any(t.name == f"rejected runs {path}" for t in threading.enumerate())
        runs.add(CrcError("CRC mismatch", bytes.fromhex("aa55010203")), utcnow())
        assert runs.writing
        assert any(t.name == f"rejected runs {path}" for t in threading.enumerate())
    finally:
        runs.close()
    assert not runs.writing
    assert [(run.reason, run.raw_hex) for run in read_runs(path)] == [("crc", "aa55010203")]
    # Once closed it takes no more; started again, what was added meanwhile is written.
    runs.add(GarbageError("no sync", b"\x00\x01"), utcnow())
    assert not runs.writing
    runs.start()
    runs.close()
    assert [run.reason for run in read_runs(path)] == ["crc", "garbage"]
