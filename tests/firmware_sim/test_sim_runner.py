"""firmware_sim.runner: a town in real time on ptys, and the `python -m firmware_sim` entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial

from firmware_sim.radio import RadioClosedError
from firmware_sim.runner import SimRunner, main
from firmware_sim.town import Town
from protocol.frames import BAUD_RATE, Beacon, FrameDecoder, ModuleStatus
from protocol.ids import format_tag


def test_every_station_port_carries_its_beacons_and_status() -> None:
    town = Town.generate(21, stations=3, bikes=60)
    with SimRunner(town, speedup=10.0) as runner:
        assert set(runner.ports) == {"st-001", "st-002", "st-003"}
        ports = {sid: serial.serial_for_url(path, baudrate=BAUD_RATE, timeout=0) for sid, path in runner.ports.items()}
        decoders = {sid: FrameDecoder() for sid in ports}
        frames: dict[str, list[object]] = {sid: [] for sid in ports}
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for sid, port in ports.items():
                frames[sid] += decoders[sid].feed(port.read(4096))
            time.sleep(0.02)
        for port in ports.values():
            port.close()
    tags = {b.tag_id for b in town.bikes}
    for sid, got in frames.items():
        assert any(isinstance(f, ModuleStatus) for f in got), sid
        assert all(f.tag_id in tags for f in got if isinstance(f, Beacon))
        assert not decoders[sid].rejected
    assert sum(isinstance(f, Beacon) for got in frames.values() for f in got) > 20
    assert runner.beacons_heard > 20
    assert not runner.running


def test_steal_sets_the_bike_riding_away() -> None:
    town = Town.generate(22, stations=3, bikes=20)
    with SimRunner(town, speedup=20.0) as runner:
        bike = runner.steal(town.bike_to_steal().bike_no)
        assert bike.stolen and bike.riding
        start = (bike.x_m, bike.y_m)
        time.sleep(0.5)
        assert (bike.x_m, bike.y_m) != start


def test_a_stopped_runner_closes_its_ports_and_cannot_restart() -> None:
    runner = SimRunner(Town.generate(23, stations=2, bikes=5))
    runner.start()
    runner.stop()
    assert all(radio.closed for radio in runner.radios.values())
    with pytest.raises(RadioClosedError):
        runner.start()


def _cpu_s(threads: list[int]) -> float:
    """CPU seconds these threads of this process have used (Linux: /proc/self/task/<id>/stat)."""
    ticks = 0
    for native_id in threads:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def test_default_town_runs_in_real_time_on_a_fraction_of_a_core() -> None:
    with SimRunner(Town.generate(1)) as runner:
        ports = [serial.serial_for_url(p, baudrate=BAUD_RATE, timeout=0) for p in runner.ports.values()]
        # Only the simulation thread and this reading loop: servers that other tests left running in
        # this process must not count.
        sim = next(t for t in threading.enumerate() if t.name == "firmware-sim")
        threads = [threading.get_native_id(), sim.native_id or 0]
        cpu0, wall0 = _cpu_s(threads), time.monotonic()
        while time.monotonic() - wall0 < 3.0:
            for port in ports:
                port.read(4096)  # a gateway's worth of reading is counted too
            time.sleep(0.05)
        cpu = (_cpu_s(threads) - cpu0) / (time.monotonic() - wall0)
        for port in ports:
            port.close()
    assert abs(runner.town.now_s - 3.0) < 0.5  # kept up with the wall clock
    assert cpu < 0.2


def test_main_prints_the_port_map_first_and_a_line_per_theft(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "5", "--stations", "3", "--bikes", "10", "--steal-after", "0.2", "--duration", "0.6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = json.loads(lines[0])
    assert first["event"] == "ports" and first["seed"] == 5
    assert sorted(first["ports"]) == ["st-001", "st-002", "st-003"]
    assert all(path.startswith("/dev/") for path in first["ports"].values())
    theft = json.loads(lines[1])
    town = Town.generate(5, stations=3, bikes=10)
    bike = town.bike(theft["bike_no"])
    assert theft["event"] == "theft"
    assert theft["tag_id"] == format_tag(bike.tag_id) and theft["plate"] == bike.plate
    assert len(lines) == 2


def test_python_dash_m_firmware_sim_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "--stations", "2", "--bikes", "5", "--duration", "0.3"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    first = json.loads(proc.stdout.splitlines()[0])
    assert set(first["ports"]) == {"st-001", "st-002"}
