"""`bikeguard demo` as a user runs it: the stolen bike's alarm shows on the map, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bikeguard.services import free_port
from tests.backend.test_ingest import wait_until
from tests.browser import browser_page, chromium_path, console_errors, screenshot_path


def test_demo_shows_the_stolen_bike_on_the_map_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIKEGUARD_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "bikeguard.cli", "demo", "--port", str(port), "--steal-after", "15"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    output: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if "sign in as police" in line:
                break
        else:
            raise AssertionError("demo ended before it was ready:\n" + "".join(output))
        police = re.search(r"username (\S+)\s+password (\S+)", output[-1])
        assert police, output[-1]
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) >= 3  # broker, backend, simulator (and PostgreSQL)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/alarms").status_code == 401
        if chromium_path() or os.environ.get("CI"):
            took = watch_the_theft_on_the_police_console(base, police[1], police[2])
        else:
            took = wait_for_the_alarm(base, police[1], police[2])
        print(f"alarm {took:.0f} s after the demo was ready")
        demo.send_signal(signal.SIGINT)  # what Ctrl-C does
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    leftovers = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}"


def wait_for_the_alarm(base: str, username: str, password: str) -> float:
    """Seconds until the police see the stolen bike's alarm on the API."""
    token = httpx.post(f"{base}/api/auth/login", json={"username": username, "password": password}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    started = time.monotonic()
    wait_until(lambda: len(httpx.get(f"{base}/api/alarms", headers=headers).json()) == 1, timeout_s=120)
    alarm = httpx.get(f"{base}/api/alarms", headers=headers).json()[0]
    assert alarm["kind"] == "stolen_chip_seen" and alarm["plate"]
    return time.monotonic() - started


def watch_the_theft_on_the_police_console(base: str, username: str, password: str) -> float:
    """The duty officer has the console open before the theft: the alarm arrives live (no reload), then the
    trail grows as the thief rides past stations, with the likeliest next stations; returns seconds to the alarm."""
    with browser_page(1400, 900) as page:
        page.goto(f"{base}/", wait_until="load")
        page.wait_for_selector("#login-form")  # the map is for the police: sign in first
        page.fill("#username", username)
        page.fill("#password", password)
        page.click("#login-submit")
        page.wait_for_selector("#bg-live-status.connected")  # the live feed is open
        assert page.locator(".bg-alarm").count() == 0, "the theft has not happened yet"
        page.evaluate("window.bgLoadedOnce = true")  # gone if the page reloads
        started = time.monotonic()
        page.wait_for_selector(".bg-alarm", timeout=120_000)
        took = time.monotonic() - started
        assert page.evaluate("window.bgLoadedOnce") is True, "the alarm came by the live feed, not a reload"
        item = page.locator(".bg-alarm").first.inner_text()
        assert "Stolen" in item, item
        # The thief rides on: once the alarm's trail links two stations, the console shows it at the second.
        token = httpx.post(f"{base}/api/auth/login", json={"username": username, "password": password}).json()
        headers = {"Authorization": f"Bearer {token['token']}"}

        def stolen() -> dict[str, Any]:
            found = httpx.get(f"{base}/api/alarms", headers=headers).json()
            return next(a for a in found if a["kind"] == "stolen_chip_seen")

        wait_until(lambda: len({p["station_id"] for p in stolen()["trail"]}) >= 2, timeout_s=180)
        alarm = stolen()
        page.wait_for_selector(f".bg-alarm.sev-critical >> text={alarm['station_name']}")
        assert page.locator("path.bg-trail").count() >= 1
        page.wait_for_timeout(1000)  # Leaflet's zoom animation
        page.screenshot(path=str(screenshot_path("demo.png")))
        assert console_errors(page) == []
    return took
