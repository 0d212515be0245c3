"""`python -m gateway` (what `bikeguard gateway` runs): arguments over env, SIGTERM, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bikeguard.services import Broker, stop_process
from gateway.spool import Spool
from protocol.messages import SightingBatch, StationStatus
from tests.gateway.harness import FakeModule, beacon, eventually, watching

pytestmark = pytest.mark.anyio


StartGateway = Callable[[list[str], dict[str, str]], "subprocess.Popen[bytes]"]


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """Start gateway processes; whatever is still running at the end is stopped."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"gateway-{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


def station_args(station_id: str, module: FakeModule, broker: Broker, spool: Path) -> list[str]:
    """The command line the lead's `bikeguard gateway` passes on."""
    return ["--station-id", station_id, "--serial", module.path, "--mqtt", broker.url, "--spool", str(spool)]


async def test_arguments_override_env_and_sigterm_spools_open_passages_and_says_offline(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, start_gateway: StartGateway
) -> None:
    spool = tmp_path / "s.spool"
    env = {
        "BIKEGUARD_GATEWAY_STATION_ID": "not-this-one",
        "BIKEGUARD_GATEWAY_STATUS_INTERVAL_S": "0.2",
        "BIKEGUARD_GATEWAY_PASSAGE_GAP_S": "30",
    }
    async with watching(broker, topic_prefix) as watcher:
        proc = start_gateway(station_args(topic_prefix, module, broker, spool), env)
        await watcher.wait("status", timeout_s=30)

        def counted() -> bool:
            # Beacons written before the gateway opened the port are flushed by pyserial: resend.
            module.send(beacon(0x5151))
            return any(StationStatus.parse(p).beacons_total for p in watcher.of("status"))

        await eventually(counted, timeout_s=15, what="a status counting beacons")

        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: proc.poll() is not None, timeout_s=30, what="the gateway to exit")
        assert proc.returncode == 0

        def offline() -> StationStatus | None:
            last = StationStatus.parse(watcher.of("status")[-1])
            return last if last.state == "offline" else None

        last = await eventually(offline, what="status offline")
        assert last.sent_at is not None  # said by the gateway itself, not by its will
        assert watcher.of("sightings") == []
    [entry] = Spool(spool).peek(10)
    [sighting] = SightingBatch.parse(entry.payload).sightings
    assert sighting.tag_id == "00005151"


async def test_a_killed_gateway_is_reported_offline_by_its_last_will(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, start_gateway: StartGateway
) -> None:
    async with watching(broker, topic_prefix) as watcher:
        proc = start_gateway(station_args(topic_prefix, module, broker, tmp_path / "s.spool"), {})
        [online] = await watcher.wait("status", timeout_s=30)
        assert StationStatus.parse(online).state == "online"

        proc.kill()

        [_, will] = await watcher.wait("status", 2)
        status = StationStatus.parse(will)
        assert (status.state, status.sent_at) == ("offline", None)
