"""`bikeguard demo` as a user runs it: the stolen bike's alarm shows on the map, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from bikeguard.services import free_port
from tests.backend.test_ingest import wait_until
from tests.browser import chromium_path, screenshot

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "demo.png"


def test_demo_shows_the_stolen_bike_on_the_map_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIKEGUARD_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "bikeguard.cli", "demo", "--port", str(port), "--steal-after", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    output: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if "open http" in line:
                break
        else:
            raise AssertionError("demo ended before it was ready:\n" + "".join(output))
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 3  # broker, backend, simulator (and PostgreSQL)
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        wait_until(lambda: len(httpx.get(f"{base}/api/alarms").json()) == 1, timeout_s=120)
        took = time.monotonic() - started
        alarm = httpx.get(f"{base}/api/alarms").json()[0]
        assert alarm["kind"] == "stolen_chip_seen" and alarm["plate"]
        print(f"alarm {took:.0f} s after the demo was ready")
        if chromium_path() or os.environ.get("CI"):
            time.sleep(20)  # let the stolen bike pass a station or two, so the trail shows
            errors = screenshot(f"{base}/", SCREENSHOT, width=1400, height=900, wait_for=".bg-alarm")
            assert errors == []
        demo.send_signal(signal.SIGINT)  # what Ctrl-C does
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    leftovers = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}"
