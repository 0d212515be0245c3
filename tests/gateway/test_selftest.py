"""The commissioning self-test against real ptys and real brokers: every step passes, and each failure says why."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import serial

from backend.provisioning import acl_file, password_file, password_hash
from bikeguard.services import Broker, free_port, start_broker
from gateway.selftest import STEPS, NtpStatus, Report, SelfTest, SelfTestSettings, StepResult, parse_chronyc_tracking
from protocol.frames import ModuleStatus
from protocol.messages import (
    Hotlist,
    SelfTestStep,
    SelfTestStepStarted,
    SelfTestSummary,
    StationStatus,
    parse_selftest,
    utcnow,
)
from protocol.signing import generate_signing_key, public_key_of, read_signing_key, sign_hotlist
from protocol.topics import HOTLIST, station_topic
from tests.backend.test_provisioning import require_mosquitto
from tests.gateway.harness import (
    FakeModule,
    TcpHop,
    beacon,
    eventually,
    fast_settings,
    mqtt_client,
    retained,
    watching,
)

pytestmark = pytest.mark.anyio

TEST_TAG = 0x0A1B2C3D
STATUS = ModuleStatus(noise_floor_dbm=-97, firmware=0x0102, uptime_s=3600)
SIGNING_KEY = generate_signing_key()  # the backend's, for these tests; stations are given its public half
PUBLIC_KEY = public_key_of(SIGNING_KEY)


async def synced() -> NtpStatus:
    return NtpStatus("chrony", synchronised=True, offset_s=0.001)


def selftest(
    station_id: str,
    serial_url: str,
    mqtt_url: str,
    tmp_path: Path,
    *,
    clock: Callable[[], datetime] = utcnow,
    ntp: Callable[[], Any] = synced,
    open_serial: Callable[..., serial.SerialBase] = serial.serial_for_url,
    hotlist_public_key: str | None = PUBLIC_KEY,
    **options: Any,
) -> SelfTest:
    """A self-test whose waits end as soon as what they wait for comes, with room for a loaded machine; a test
    of a step that fails by waiting in vain gives that step a short timeout."""
    values: dict[str, Any] = {
        "test_tag": "0A1B2C3D",
        "module_timeout_s": 10,
        "tag_timeout_s": 10,
        "connect_timeout_s": 10,
        "hotlist_timeout_s": 10,
        "heartbeat_timeout_s": 10,
        **options,
    }
    settings = fast_settings(
        station_id, serial_url, mqtt_url, tmp_path / "s.spool", hotlist_public_key=hotlist_public_key
    )
    return SelfTest(settings, SelfTestSettings(**values), clock=clock, ntp=ntp, open_serial=open_serial)


async def run(test: SelfTest, feed: Callable[[], None] | None = None) -> tuple[Report, dict[str, StepResult]]:
    """Run it; `feed` plays the module once the port is open (pyserial flushes what came before)."""

    def on_result(result: StepResult) -> None:
        if result.name == "serial" and result.ok and feed is not None:
            feed()

    report = await test.run(on_result)
    assert [s.name for s in report.steps] == list(STEPS)
    return report, {s.name: s for s in report.steps}


@contextlib.asynccontextmanager
async def hotlist_on(
    broker: Broker, issued_at: datetime | None = None, signing_key: str | None = SIGNING_KEY
) -> AsyncIterator[Hotlist]:
    """A retained hot list on the broker for the duration (signed with `signing_key`, the backend's by default;
    None: unsigned), cleared afterwards."""
    hotlist = Hotlist(
        version=time.time_ns() // 1_000_000, issued_at=issued_at or utcnow(), tags=["00C0FFEE", "0BADCAFE"]
    )
    if signing_key is not None:
        hotlist = sign_hotlist(hotlist, read_signing_key(signing_key))
    async with mqtt_client(broker) as client:
        await client.publish(HOTLIST, hotlist.to_json(), qos=1, retain=True)
        try:
            yield hotlist
        finally:
            await client.publish(HOTLIST, b"", qos=1, retain=True)


def dead_broker_url() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"


async def test_every_step_passes_with_a_module_a_test_tag_and_the_broker(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    test = selftest(topic_prefix, module.path, broker.url, tmp_path)
    async with hotlist_on(broker) as hotlist:
        report, steps = await run(
            test, lambda: module.send(STATUS, beacon(0x12345678, -40), beacon(TEST_TAG, rssi_dbm=-58, antenna=1))
        )

    assert [s.status for s in report.steps] == ["pass"] * 7 + ["skip"], [s.to_dict() for s in report.steps]
    assert (report.ok, report.exit_code) == (True, 0)
    assert steps["serial"].value == f"{module.path} open at 115200 baud 8N1"
    assert (steps["module"].data["firmware"], steps["module"].data["uptime_s"]) == ("1.2", 3600)
    assert steps["module"].value.startswith("firmware 1.2, up 1 h 00 min")
    assert steps["noise"].value == "-97 dBm (limit -85 dBm)"
    tag = steps["test_tag"].data
    assert (tag["tag_id"], tag["rssi_dbm"], tag["antenna"], tag["other_tags"]) == ("0A1B2C3D", -58, 1, ["12345678"])
    assert "NTP synchronised (chrony, offset +0.001 s)" in steps["clock"].value
    assert (steps["broker"].data["hotlist_version"], steps["broker"].data["hotlist_tags"]) == (hotlist.version, 2)
    assert f"hot list version {hotlist.version}, 2 tags" in steps["broker"].value
    assert steps["heartbeat"].data["round_trip_ms"] < 2000
    assert steps["backend"].value == "skipped: no --backend given"
    assert json.loads(report.to_json())["steps"][3]["data"]["rssi_dbm"] == -58
    # The self-test is not the gateway: it leaves the station offline until the gateway says otherwise.
    left = StationStatus.parse(await retained(broker, station_topic(topic_prefix, "status")) or b"")
    assert left.state == "offline"


@pytest.mark.parametrize(
    ("signing_key", "reason", "says"),
    [
        (generate_signing_key(), "bad_signature", "its signature is not the backend's key this station was given"),
        (None, "unsigned", "it is not signed"),
    ],
    ids=["foreign-signed", "unsigned"],
)
async def test_a_retained_hot_list_the_gateway_would_refuse_fails_the_broker_step(
    broker: Broker, topic_prefix: str, tmp_path: Path, signing_key: str | None, reason: str, says: str
) -> None:
    # Someone else's list on the broker (a forger's, or another backend's): the gateway would keep its last good
    # list and flag no new theft, so commissioning must not pass.
    async with hotlist_on(broker, signing_key=signing_key):
        _, steps = await run(selftest(topic_prefix, str(tmp_path / "none"), broker.url, tmp_path))
    step = steps["broker"]
    assert step.status == "fail"
    assert f"but the gateway would refuse the retained hot list: {says}" in step.value
    assert step.data["hotlist_refusal"] == reason
    assert (
        "BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY" in step.advice
        and "only the backend's MQTT user may write" in step.advice
    )


async def test_a_station_without_the_public_key_fails_the_broker_step(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    async with hotlist_on(broker):
        _, steps = await run(
            selftest(topic_prefix, str(tmp_path / "none"), broker.url, tmp_path, hotlist_public_key=None)
        )
    step = steps["broker"]
    assert step.status == "fail" and step.data["hotlist_refusal"] == "no_public_key"
    assert "this station has no key to check its signature with" in step.value
    assert step.advice.startswith("set BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY")


async def test_missing_serial_device_skips_the_radio_steps_but_still_tests_the_broker(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "ttyUSB9")
    async with hotlist_on(broker):
        report, steps = await run(selftest(topic_prefix, missing, broker.url, tmp_path))

    assert steps["serial"].status == "fail"
    assert steps["serial"].value == f"no such device {missing}"
    assert "`ls -l /dev/ttyUSB* /dev/ttyACM*`" in steps["serial"].advice
    for name in ("module", "noise", "test_tag"):
        assert steps[name].value == "skipped: the serial port did not open"
    assert [steps[n].status for n in ("clock", "broker", "heartbeat")] == ["pass", "pass", "pass"]
    assert report.exit_code == 1


async def test_port_held_by_another_program_is_busy(module: FakeModule, topic_prefix: str, tmp_path: Path) -> None:
    holder = os.open(module.path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a gateway opening it exclusively holds
        _, steps = await run(selftest(topic_prefix, module.path, dead_broker_url(), tmp_path))
    finally:
        os.close(holder)
    assert steps["serial"].value == f"{module.path} is busy: another program has it open"
    assert f"`fuser -v {module.path}`" in steps["serial"].advice


async def test_permission_denied_advises_adding_the_user_to_the_devices_group(
    topic_prefix: str, tmp_path: Path
) -> None:
    def denied(url: str, **_: Any) -> serial.SerialBase:
        # What pyserial raises for a device node of group dialout, mode 660 (as root we cannot provoke it).
        raise serial.SerialException(errno.EACCES, f"could not open port {url}: [Errno 13] Permission denied")

    _, steps = await run(selftest(topic_prefix, "/dev/ttyUSB0", dead_broker_url(), tmp_path, open_serial=denied))
    assert steps["serial"].value == "permission denied on /dev/ttyUSB0"
    assert "usermod -aG" in steps["serial"].advice and "log out" in steps["serial"].advice


async def test_module_sending_only_garbage_means_wrong_baud_rate_or_wiring(
    module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    # What 115200-baud frames look like read at another rate: noise, now and then a sync with a bad CRC.
    garbage = bytes(range(0x00, 0xA0)) + bytes.fromhex("AA 55 08 02 9F 01 02 00 00 0E 10 00 00") + bytes(range(0x40))
    test = selftest(topic_prefix, module.path, dead_broker_url(), tmp_path, module_timeout_s=0.5)
    _, steps = await run(test, lambda: module.send_raw(garbage))

    step = steps["module"]
    assert step.status == "fail"
    # How many garbage runs depends on how the reads split the bytes; the CRC error does not.
    assert re.fullmatch(
        rf"{len(garbage)} bytes but no valid frame in 0\.5 s \(rejected: garbage \d+, crc 1\)", step.value
    ), step.value
    assert step.advice.startswith("wrong baud rate or wiring: the module talks 115200 baud 8N1")
    assert step.data["rejected"]["crc"] == 1
    assert steps["noise"].value == steps["test_tag"].value == "skipped: the radio module did not answer"


async def test_silent_module_says_no_bytes_at_all(module: FakeModule, topic_prefix: str, tmp_path: Path) -> None:
    test = selftest(topic_prefix, module.path, dead_broker_url(), tmp_path, module_timeout_s=0.5)
    _, steps = await run(test)
    assert steps["module"].value == f"no bytes at all on {module.path} at 115200 baud in 0.5 s"
    assert steps["module"].advice.startswith("check the radio module's power LED and the USB cable")


async def test_noisy_module_fails_the_noise_floor_with_interference_advice(
    module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    noisy = ModuleStatus(noise_floor_dbm=-60, firmware=0x0102, uptime_s=20)
    test = selftest(topic_prefix, module.path, dead_broker_url(), tmp_path)
    report, steps = await run(test, lambda: module.send(noisy, beacon(TEST_TAG, -50)))
    assert steps["noise"].status == "fail"
    assert steps["noise"].value == "-60 dBm, above the -85 dBm limit"
    assert steps["noise"].advice.startswith("interference: move the antenna away from")
    assert steps["test_tag"].status == "pass"  # a noisy site still reads a tag held close
    assert report.exit_code == 1


async def test_test_tag_that_never_shows_fails_and_names_the_tags_heard(
    module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    test = selftest(topic_prefix, module.path, dead_broker_url(), tmp_path, tag_timeout_s=0.5)
    _, steps = await run(test, lambda: module.send(STATUS, beacon(0x12345678, -60)))
    assert steps["test_tag"].status == "fail"
    assert steps["test_tag"].value == "test tag 0A1B2C3D not heard in 0.5 s (heard 1 other tag: 12345678)"
    assert "check the id printed on the test tag" in steps["test_tag"].advice


async def test_weak_test_tag_warns_of_a_bad_antenna_connection(
    module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    test = selftest(topic_prefix, module.path, dead_broker_url(), tmp_path)
    _, steps = await run(test, lambda: module.send(STATUS, beacon(TEST_TAG, rssi_dbm=-82, antenna=0)))
    step = steps["test_tag"]
    assert (step.status, step.ok) == ("warn", True)
    assert step.advice.startswith("weak signal: -82 dBm at arm's length is below -75 dBm, which means a bad antenna")
    assert "antenna port 0" in step.advice


async def test_wrong_broker_port_is_unreachable(topic_prefix: str, tmp_path: Path) -> None:
    url = dead_broker_url()
    _, steps = await run(selftest(topic_prefix, str(tmp_path / "none"), url, tmp_path))
    broker = steps["broker"]
    assert broker.value == f"unreachable: nothing listens on {url.removeprefix('mqtt://')} (connection refused)"
    assert broker.data["refusal"] == "unreachable"
    assert "check the port in --mqtt" in broker.advice
    assert steps["heartbeat"].value == steps["backend"].value == "skipped: the broker step failed"
    assert "no broker-side time (no connection to the broker)" in steps["clock"].value


async def test_clock_of_a_board_that_never_set_it_fails(topic_prefix: str, tmp_path: Path) -> None:
    def boot_time() -> datetime:
        return datetime(1970, 1, 1, 0, 0, 42, tzinfo=UTC)

    test = selftest(topic_prefix, str(tmp_path / "none"), dead_broker_url(), tmp_path, clock=boot_time)
    _, steps = await run(test)
    assert steps["clock"].value == "the system clock says 1970-01-01 00:00:42 UTC: it was never set"
    assert "NTP (UDP port 123)" in steps["clock"].advice


async def test_clock_behind_the_backends_hot_list_fails(broker: Broker, topic_prefix: str, tmp_path: Path) -> None:
    async with hotlist_on(broker, issued_at=utcnow() + timedelta(seconds=60)):
        _, steps = await run(selftest(topic_prefix, str(tmp_path / "none"), broker.url, tmp_path))
    assert steps["clock"].status == "fail"
    assert re.match(
        r"the clock is at least (59\.\d|60\.0) s behind: the retained hot list was issued at ", steps["clock"].value
    )


async def test_ntp_offset_beyond_two_seconds_fails_and_unsynchronised_ntp_warns(
    topic_prefix: str, tmp_path: Path
) -> None:
    async def off() -> NtpStatus:
        return NtpStatus("chrony", synchronised=True, offset_s=-5.25)

    async def unsynced() -> NtpStatus:
        return NtpStatus("timedatectl", synchronised=False)

    _, steps = await run(selftest(topic_prefix, str(tmp_path / "none"), dead_broker_url(), tmp_path, ntp=off))
    assert steps["clock"].value.startswith("the clock is -5.2 s off NTP time")
    _, steps = await run(selftest(topic_prefix, str(tmp_path / "none"), dead_broker_url(), tmp_path, ntp=unsynced))
    assert steps["clock"].status == "warn"
    assert "NTP NOT synchronised (timedatectl)" in steps["clock"].value
    assert steps["clock"].advice.startswith("NTP is not synchronised yet")


def test_chronyc_tracking_output_gives_sync_state_and_signed_offset() -> None:
    text = (
        "Reference ID    : C0A80101 (192.168.1.1)\nStratum         : 3\n"
        "System time     : 0.000123456 seconds slow of NTP time\nLast offset     : -0.000001 seconds\n"
        "Leap status     : Normal\n"
    )
    assert parse_chronyc_tracking(text) == NtpStatus("chrony", True, -0.000123456)
    unsynced = text.replace("slow", "fast").replace("Normal", "Not synchronised")
    assert parse_chronyc_tracking(unsynced) == NtpStatus("chrony", False, 0.000123456)
    assert parse_chronyc_tracking("506 Cannot talk to daemon\n") is None


# Every step on the station's selftest topic, for the installer's web page.


async def test_each_step_is_announced_as_it_begins_and_published_as_it_completes_then_the_runs_summary(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    test = selftest(topic_prefix, module.path, broker.url, tmp_path)
    seen: dict[str, Any] = {}
    async with hotlist_on(broker), watching(broker, topic_prefix) as watcher:

        async def present_the_tag_once_asked() -> None:
            # The installer's page shows "waiting for the test tag" while the gateway waits: the step's start is on
            # the broker before the tag is presented (the radio steps go out as they happen, not after the clock).
            seen["when_asked"] = [parse_selftest(p) for p in await watcher.wait("selftest", 7)]
            module.send(beacon(TEST_TAG, rssi_dbm=-58, antenna=1))

        async def on_result(result: StepResult) -> None:
            if result.name == "serial":
                module.send(STATUS)
                seen["tag"] = asyncio.create_task(present_the_tag_once_asked())

        report = await test.run(on_result)
        await seen["tag"]
        payloads = await watcher.wait("selftest", 16)

    asked = seen["when_asked"]
    assert [(m.kind, m.seq, m.name) for m in asked if not isinstance(m, SelfTestSummary)] == [
        ("started", 1, "serial"),
        ("step", 1, "serial"),
        ("started", 2, "module"),
        ("step", 2, "module"),
        ("started", 3, "noise"),
        ("step", 3, "noise"),
        ("started", 4, "test_tag"),
    ]
    assert isinstance(asked[-1], SelfTestStepStarted) and asked[-1].wait_s == 10  # --tag-timeout
    assert asked[-1].title == "test tag is read"
    messages = [parse_selftest(p) for p in payloads]
    started = [m for m in messages if isinstance(m, SelfTestStepStarted)]
    steps = [m for m in messages if isinstance(m, SelfTestStep)]
    summary = messages[-1]
    assert len(steps) == 8 and isinstance(summary, SelfTestSummary) and len(messages) == 16
    # Every step that ran was announced first; the skipped one (no --backend) was not.
    assert [(m.seq, m.name) for m in started] == [(m.seq, m.name) for m in steps if m.status != "skip"]
    assert all(messages.index(a) < messages.index(b) for a, b in zip(started, steps, strict=False))
    assert {m.run_id for m in messages} == {report.run_id} and len(report.run_id) == 16
    assert [(m.seq, m.name, m.status) for m in steps] == [(i + 1, s.name, s.status) for i, s in enumerate(report.steps)]
    by_name = {m.name: m for m in steps}
    assert (by_name["noise"].noise_floor_dbm, by_name["test_tag"].rssi_dbm) == (-97, -58), by_name["test_tag"]
    assert by_name["serial"].message == report.steps[0].value and by_name["serial"].title == "serial port opens"
    assert (summary.seq, summary.result, summary.steps, summary.counts) == (9, "passed", 8, {"pass": 7, "skip": 1})
    assert json.loads(report.to_json())["run_id"] == report.run_id


async def test_failed_step_carries_its_advice_and_a_failed_run_says_so(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    async with hotlist_on(broker), watching(broker, topic_prefix) as watcher:
        report, _ = await run(selftest(topic_prefix, str(tmp_path / "ttyUSB9"), broker.url, tmp_path))
        # Up to the summary, the last message: the run ends at its PUBACK, maybe before the watcher has them all.
        payloads = await eventually(
            lambda: (got := watcher.of("selftest")) and isinstance(parse_selftest(got[-1]), SelfTestSummary) and got,
            15.0,
            "the self-test's summary",
        )
        messages = [parse_selftest(p) for p in payloads]
        messages = [m for m in messages if not isinstance(m, SelfTestStepStarted)]
    serial_step, summary = messages[0], messages[-1]
    assert isinstance(serial_step, SelfTestStep) and isinstance(summary, SelfTestSummary)
    assert (serial_step.status, serial_step.message) == ("fail", f"no such device {tmp_path / 'ttyUSB9'}")
    assert serial_step.advice == report.steps[0].advice != ""
    assert [m.status for m in messages[1:4] if isinstance(m, SelfTestStep)] == ["skip"] * 3
    assert (summary.result, summary.counts["fail"]) == ("failed", 1)


async def test_a_lost_uplink_stops_the_publishing_but_never_the_self_test(
    broker: Broker, hop: TcpHop, topic_prefix: str, tmp_path: Path
) -> None:
    await hop.open()

    async def on_result(result: StepResult) -> None:
        if result.name == "broker":
            await hop.cut()

    async with hotlist_on(broker), watching(broker, topic_prefix) as watcher:
        test = selftest(
            topic_prefix, str(tmp_path / "none"), hop.url, tmp_path, connect_timeout_s=2, heartbeat_timeout_s=2
        )
        report = await test.run(on_result)
        await watcher.wait("selftest", 6)
        await asyncio.sleep(0.3)
        published = [parse_selftest(p) for p in watcher.of("selftest")]
    assert [s.name for s in report.steps] == list(STEPS)
    assert report.steps[5].status == "pass" and report.steps[6].status == "fail"  # the heartbeat
    # The steps up to the broker's; of the steps that ran, their starts (the heartbeat's came after the cut).
    assert [m.seq for m in published if isinstance(m, SelfTestStep)] == [1, 2, 3, 4, 5, 6]
    assert [m.seq for m in published if isinstance(m, SelfTestStepStarted)] == [1, 5, 6]


async def test_no_broker_means_nothing_published_and_the_same_report(topic_prefix: str, tmp_path: Path) -> None:
    report, steps = await run(selftest(topic_prefix, str(tmp_path / "none"), dead_broker_url(), tmp_path))
    assert steps["broker"].data["refusal"] == "unreachable"
    assert report.run_id and report.exit_code == 1


# A Mosquitto with station credentials and the ACL backend.provisioning writes.


class SecuredBroker:
    """A Mosquitto that knows one station (its id is its user name) and the backend user."""

    def __init__(self, broker: Broker, station_id: str, password: str) -> None:
        self.broker = broker
        self.station_id = station_id
        self.password = password

    def url(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@{self.broker.host}:{self.broker.port}"


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredBroker]:
    require_mosquitto()
    station_id, password = f"s{uuid.uuid4().hex[:10]}", "station-secret"
    broker = start_broker(
        "mosquitto",
        passwords=password_file(
            {station_id: password_hash(password), "bikeguard-backend": password_hash("backend-secret")}
        ),
        acl=acl_file([station_id]),
    )
    try:
        hotlist = sign_hotlist(Hotlist(version=1, issued_at=utcnow(), tags=["00C0FFEE"]), read_signing_key(SIGNING_KEY))

        async def publish() -> None:
            async with aiomqtt.Client(
                broker.host, broker.port, username="bikeguard-backend", password="backend-secret"
            ) as backend:
                await backend.publish(HOTLIST, hotlist.to_json(), qos=1, retain=True)

        asyncio.run(publish())
        yield SecuredBroker(broker, station_id, password)
    finally:
        broker.stop()


async def test_station_with_its_own_credentials_passes_broker_and_heartbeat(
    secured: SecuredBroker, tmp_path: Path
) -> None:
    sid = secured.station_id
    _, steps = await run(selftest(sid, str(tmp_path / "none"), secured.url(sid, secured.password), tmp_path))
    assert steps["broker"].status == "pass", steps["broker"]
    assert f"as user '{sid}'" in steps["broker"].value
    assert steps["heartbeat"].status == "pass", steps["heartbeat"]


async def test_wrong_password_is_bad_credentials_and_no_user_is_not_authorised(
    secured: SecuredBroker, tmp_path: Path
) -> None:
    sid = secured.station_id
    _, steps = await run(selftest(sid, str(tmp_path / "none"), secured.url(sid, "wrong"), tmp_path))
    broker = steps["broker"]
    assert broker.value == f"refused: bad credentials for user '{sid}' (CONNACK 135: Not authorized)"
    assert broker.data["refusal"] == "bad_credentials"
    assert "check the user and password in --mqtt" in broker.advice
    assert steps["heartbeat"].value == "skipped: the broker step failed"

    anonymous = secured.broker.anonymous_url
    _, steps = await run(selftest(sid, str(tmp_path / "none"), anonymous, tmp_path))
    assert steps["broker"].value == "refused: not authorised with no username (CONNACK 135: Not authorized)"
    assert steps["broker"].data["refusal"] == "not_authorised"


async def test_station_id_its_acl_does_not_cover_fails_the_heartbeat_with_acl_advice(
    secured: SecuredBroker, tmp_path: Path
) -> None:
    other = f"{secured.station_id}-b"
    test = selftest(
        other,
        str(tmp_path / "none"),
        secured.url(secured.station_id, secured.password),
        tmp_path,
        heartbeat_timeout_s=0.5,
    )
    _, steps = await run(test)
    assert steps["broker"].status == "pass"  # the hot list is readable: the credentials are fine
    heartbeat = steps["heartbeat"]
    assert heartbeat.value == "the broker took our online status but did not send it back within 0.5 s"
    assert heartbeat.advice.startswith("the broker's ACL or the station id is wrong")
    assert f"the MQTT user '{secured.station_id}' differs from --station-id '{other}'" in heartbeat.advice
    assert steps["backend"].value == "skipped: no --backend given"


# The backend check, against a stand-in that reports what the broker delivered.


class FakeBackend:
    """GET /api/stations as the backend answers it, from the statuses a watcher saw on the broker."""

    def __init__(self, station_id: str, statuses: Callable[[], list[bytes]], token: str = "good-token") -> None:
        self.station_id = station_id
        self.statuses = statuses
        self.token = token
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.headers.get("Authorization") != f"Bearer {backend.token}":
                    self._reply(401, {"detail": "sign in first"})
                elif self.path != "/api/stations":
                    self._reply(404, {"detail": "not found"})
                else:
                    self._reply(200, backend.stations())

            def _reply(self, code: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stations(self) -> list[dict[str, Any]]:
        seen = self.statuses()
        status = json.loads(seen[-1]) if seen else None
        return [
            {
                "station_id": self.station_id,
                "name": "test",
                "lat": 0.0,
                "lon": 0.0,
                "state": status["state"] if status else "unknown",
                "last_status_at": utcnow().isoformat() if status else None,
                "status": status,
            }
        ]

    @contextlib.contextmanager
    def serving(self) -> Iterator[FakeBackend]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join()


async def test_backend_check_passes_once_the_backend_shows_our_heartbeat_and_refuses_a_bad_token(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    async with hotlist_on(broker), watching(broker, topic_prefix) as watcher:
        with FakeBackend(topic_prefix, lambda: watcher.of("status")).serving() as backend:
            test = selftest(
                topic_prefix,
                str(tmp_path / "none"),
                broker.url,
                tmp_path,
                backend_url=backend.url,
                backend_token="good-token",
                backend_poll_s=0.05,
                backend_timeout_s=3,
            )
            _, steps = await run(test)
            assert steps["backend"].status == "pass", steps["backend"]
            assert steps["backend"].value.startswith(f"the backend shows {topic_prefix} online with our heartbeat")
            assert "against the backend's clock" in steps["clock"].value

            test = selftest(
                topic_prefix,
                str(tmp_path / "none"),
                broker.url,
                tmp_path,
                backend_url=backend.url,
                backend_token="stale",
            )
            _, steps = await run(test)
            assert steps["backend"].value == "the backend refused the token (HTTP 401)"
            assert "--token" in steps["backend"].advice


def test_command_line_exit_codes_human_output_and_json(topic_prefix: str, tmp_path: Path) -> None:
    base = [sys.executable, "-c", "from bikeguard.cli import main; raise SystemExit(main())", "gateway", "selftest"]
    args = ["--station-id", topic_prefix, "--serial", str(tmp_path / "ttyUSB9"), "--mqtt", dead_broker_url()]
    human = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
    assert human.returncode == 1, human.stderr
    lines = human.stdout.splitlines()
    assert lines[1] == f"[1/8] FAIL  serial port opens           no such device {tmp_path / 'ttyUSB9'}"
    assert lines[2].lstrip().startswith("-> is the radio module's USB cable plugged in")
    assert lines[-1] == f"FAIL: station {topic_prefix}: 1 warned, 2 failed, 5 skipped"

    as_json = subprocess.run([*base, *args, "--json"], capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert [s["status"] for s in report["steps"]] == ["fail", "skip", "skip", "skip", "warn", "fail", "skip", "skip"]
    assert report["steps"][5]["data"]["refusal"] == "unreachable"


async def test_command_line_passes_against_a_live_module(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    os.set_blocking(module.master, False)

    async def play() -> None:
        # A real module: a status and the test tag's beacon over and over (pyserial drops what came before open).
        while True:
            with contextlib.suppress(BlockingIOError):
                module.send(STATUS, beacon(TEST_TAG, -55))
            await asyncio.sleep(0.1)

    async with hotlist_on(broker):
        player = asyncio.create_task(play())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "selftest",
                "--station-id",
                topic_prefix,
                "--serial",
                module.path,
                "--mqtt",
                broker.url,
                "--test-tag",
                "0a1b2c3d",
                "--tag-timeout",
                "5",
                "--json",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                # The key provisioned with the station's password, as on a pole.
                env={**os.environ, "BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY": PUBLIC_KEY},
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            player.cancel()
    report = json.loads(out)
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    # The clock step asks the machine's own chrony/timedatectl: where neither answers it warns (and passes).
    assert statuses.pop("clock") in ("pass", "warn"), report
    assert statuses == {k: ("skip" if k == "backend" else "pass") for k in STEPS if k != "clock"}, report
    assert (proc.returncode, report["ok"]) == (0, True)
    assert b"hold test tag 0A1B2C3D at arm's length" in err
