"""`bikeguard demo` as a user runs it: the stolen bike's alarm shows on the map; Ctrl-C, SIGTERM and SIGHUP leave
nothing behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from bikeguard.demo import Stopped, StopSignals
from bikeguard.services import connect_packet, free_port
from tests.backend.test_ingest import wait_until
from tests.browser import browser_page, chromium_path, console_errors, screenshot_path


@dataclass
class DemoRun:
    """A `bikeguard demo` process whose TMPDIR is tmp, and what it had started when last looked at."""

    process: subprocess.Popen[str]
    port: int
    tmp: Path
    started: list[psutil.Process] = field(default_factory=list)

    def wait_for(self, text: str) -> list[str]:
        """The demo's output up to the line with text; then note what it has started."""
        output: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            output.append(line)
            if text in line:
                self.started = self._processes()
                return output
        raise AssertionError(f"demo ended before it said {text!r}:\n" + "".join(output))

    def wait_until_ready(self) -> list[str]:
        """The demo's output up to the police login line, when every part runs."""
        output = self.wait_for("sign in as police")
        assert len(self.started) >= 4, self.started  # broker, backend, simulator, PostgreSQL
        assert any(p.name() == "postgres" for p in self.started), self.started
        return output

    def _processes(self) -> list[psutil.Process]:
        # Its children, and anything else of its own: PostgreSQL, which pg_ctl starts detached, or a part orphaned
        # by a demo that died, is known by the demo's TMPDIR in its environment or on its command line.
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):  # the demo may have ended
            found |= {p.pid: p for p in psutil.Process(self.process.pid).children(recursive=True)}
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.pid != self.process.pid and self._marked(process):
                    found |= {p.pid: p for p in [process, *process.children(recursive=True)]}
        return list(found.values())

    def _marked(self, process: psutil.Process) -> bool:
        tmp = str(self.tmp)
        return any(tmp in arg for arg in process.cmdline()) or process.environ().get("TMPDIR") == tmp

    def still_running(self) -> list[psutil.Process]:
        """What the demo started (as noted before, and as found now) that has not ended (a zombie has)."""
        alive: dict[int, psutil.Process] = {}
        for process in [*self.started, *self._processes()]:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive[process.pid] = process
        return list(alive.values())


@contextlib.contextmanager
def demo_run(*options: str) -> Iterator[DemoRun]:
    """`bikeguard demo` in a session of its own with a TMPDIR of its own; whatever is left on the way out is killed
    (the test has looked for it before)."""
    tmp = Path(tempfile.mkdtemp(prefix="bikeguard-demo-test-"))
    tmp.chmod(0o755)  # as root the embedded PostgreSQL runs as a user of its own, who must reach its data there
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIKEGUARD_")}
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bikeguard.cli", "demo", "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "TMPDIR": str(tmp)},
        start_new_session=True,
    )
    run = DemoRun(process, port, tmp)
    try:
        yield run
    finally:
        if process.poll() is None:
            process.kill()
        for leftover in run.still_running():
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def test_demo_shows_the_stolen_bike_on_the_map_and_ctrl_c_stops_everything() -> None:
    with demo_run("--steal-after", "15") as demo:
        output = demo.wait_until_ready()
        police = re.search(r"username (\S+)\s+password (\S+)", output[-1])
        assert police, output[-1]
        base = f"http://127.0.0.1:{demo.port}"
        assert httpx.get(f"{base}/api/alarms").status_code == 401
        assert_the_demo_broker_refuses_anonymous_clients(output)
        if chromium_path() or os.environ.get("CI"):
            took = watch_the_theft_on_the_police_console(base, police[1], police[2])
        else:
            took = wait_for_the_alarm(base, police[1], police[2])
        print(f"alarm {took:.0f} s after the demo was ready")
        assert_the_vendor_stations_report_like_ours(output, base, police[1], police[2])
        demo.process.send_signal(signal.SIGINT)  # what Ctrl-C does
        demo.process.wait(timeout=60)
        leftovers = demo.still_running()
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}"


@pytest.mark.parametrize(
    ("signum", "when"),
    [
        (signal.SIGTERM, "sign in as police"),  # a service manager stops it
        (signal.SIGHUP, "sign in as police"),  # its terminal is closed
        (signal.SIGTERM, "PostgreSQL (embedded) started"),  # while it starts the rest
    ],
    ids=["SIGTERM", "SIGHUP", "SIGTERM-while-starting"],
)
def test_demo_stopped_by_a_service_manager_or_a_closed_terminal_leaves_nothing_running(signum: int, when: str) -> None:
    with demo_run("--stations", "3", "--bikes", "6", "--steal-after", "3600") as demo:
        demo.wait_for(when)
        assert any(p.name() == "postgres" for p in demo.started), demo.started
        if signum == signal.SIGHUP:
            assert demo.process.stdout is not None
            demo.process.stdout.close()  # the terminal is gone: what the demo says from now on goes nowhere
        demo.process.send_signal(signum)
        deadline = time.monotonic() + 15
        demo.process.wait(timeout=15)
        with contextlib.suppress(AssertionError):  # the assertion below names what is left
            wait_until(lambda: demo.still_running() == [], timeout_s=max(0.0, deadline - time.monotonic()))
        leftovers = demo.still_running()
    assert leftovers == [], f"still running 15 s after {signal.Signals(signum).name}: {leftovers}"
    assert demo.process.returncode == 0


def test_a_stop_signal_waits_for_a_starting_part_and_a_second_one_does_not() -> None:
    def signalled(signum: int) -> None:
        os.kill(os.getpid(), signum)
        time.sleep(0.1)  # the handler runs in the main thread at the next bytecode; give it the chance

    with StopSignals() as stop_signals:
        reached = []
        with pytest.raises(Stopped, match="SIGTERM"), stop_signals.held():
            signalled(signal.SIGTERM)
            reached.append("the part started")  # a part whose start was interrupted would be left unstoppable
        assert reached == ["the part started"] and stop_signals.stopping
        signalled(signal.SIGHUP)  # the clean-up runs now: nothing may cut it short
    with StopSignals() as stop_signals, pytest.raises(Stopped, match="SIGINT"), stop_signals.held():
        signalled(signal.SIGTERM)
        signalled(signal.SIGINT)  # a start that hangs must not make the demo unstoppable
        raise AssertionError("the second signal did not stop it")


def assert_the_demo_broker_refuses_anonymous_clients(output: list[str]) -> None:
    """The broker the demo says it started refuses an anonymous CONNECT; its stations were each given a password."""
    said = next(line for line in output if "MQTT broker (" in line)
    address = re.search(r"mqtt://127\.0\.0\.1:(\d+)", said)
    assert address and "no anonymous clients" in said, said
    with socket.create_connection(("127.0.0.1", int(address[1])), timeout=10) as sock:
        sock.sendall(connect_packet("outsider"))
        connack = sock.recv(4)
    assert connack[3:4] != b"\x00", f"the demo's broker let in an anonymous client: {connack!r}"
    assert any("MQTT passwords issued for 20 stations by the installer" in line for line in output), output


def assert_the_vendor_stations_report_like_ours(output: list[str], base: str, username: str, password: str) -> None:
    """The stations the demo says run as MR7901 vendor stations through its bridge are online, and their passages
    are stored in sightings, as those of the stations on ptys are."""
    said = next(line for line in output if "vendor bridge (MR7901) listening on" in line)
    vendor = dict(re.findall(r"(st-\d+) \(device (MR7901-st-\d+)\)", said))
    assert sorted(vendor) == ["st-008", "st-013"], said  # by default the two nearest the town's centre
    assert any("18 radio modules on ptys, one gateway each; 2 vendor stations" in line for line in output), output
    body = {"username": username, "password": password, "token_in_body": True}
    headers = {"Authorization": f"Bearer {httpx.post(f'{base}/api/auth/login', json=body).json()['token']}"}

    def reporting() -> dict[str, tuple[str, int]]:
        stations = httpx.get(f"{base}/api/stations", headers=headers).json()
        activity = httpx.get(f"{base}/api/stations/activity", params={"minutes": 60}, headers=headers).json()
        passages = {a["station_id"]: a["passages"] for a in activity}
        return {s["station_id"]: (s["state"], passages[s["station_id"]]) for s in stations if s["station_id"] in vendor}

    with contextlib.suppress(AssertionError):  # the assertion below says what is missing
        wait_until(lambda: all(state == "online" and n > 0 for state, n in reporting().values()), timeout_s=180)
    now = reporting()  # station id -> (state, passages stored in the last hour)
    assert set(now) == set(vendor) and all(state == "online" and n > 0 for state, n in now.values()), now
    # The installer registered each one's device id and clock's zone, and the registry says so.
    registered = {
        s["station_id"]: (s["vendor_protocol"], s["vendor_device_id"], s["time_zone"])
        for s in httpx.get(f"{base}/api/stations", headers=headers).json()
        if s["vendor_device_id"] is not None
    }
    assert registered == {sid: ("mr7901", device_id, "Asia/Shanghai") for sid, device_id in vendor.items()}


def wait_for_the_alarm(base: str, username: str, password: str) -> float:
    """Seconds until the police see the stolen bike's alarm on the API."""
    body = {"username": username, "password": password, "token_in_body": True}
    token = httpx.post(f"{base}/api/auth/login", json=body).json()["token"]
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
        body = {"username": username, "password": password, "token_in_body": True}
        token = httpx.post(f"{base}/api/auth/login", json=body).json()
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
