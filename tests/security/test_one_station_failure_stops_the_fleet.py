"""Issue 11, finding 1: one station's failure never stops another.

A fleet process (`run_fleet`, as `bikeguard demo` and a multi-station gateway run it) on the real broker, fake radio
modules on ptys. One station's task fails for a real reason: its spool file is corrupt (an SD card's bad sector:
SQLite says it is not a database). Before, the TaskGroup that ran the stations cancelled every other station and
the process stopped; now a supervisor restarts the failed station with backoff while the others go on delivering,
and it comes up once the installer has removed the broken file.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from bikeguard.services import Broker
from gateway.station import run_fleet
from protocol.messages import SightingBatch
from tests.gateway.harness import FakeModule, beacon, fast_settings, watching

pytestmark = pytest.mark.anyio


async def test_a_station_that_fails_is_restarted_while_the_others_keep_delivering(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    healthy_module, failing_module = FakeModule(), FakeModule()
    broken = tmp_path / "bad.spool"
    broken.write_bytes(b"\x00garbage, not SQLite\xff" * 512)
    healthy = fast_settings(f"{topic_prefix}ok", healthy_module.path, broker.url, tmp_path / "ok.spool")
    failing = fast_settings(
        f"{topic_prefix}bad",
        failing_module.path,
        broker.url,
        broken,
        station_restart_min_s=0.1,
        station_restart_max_s=0.4,
    )
    try:
        async with watching(broker, healthy.station_id) as ok, watching(broker, failing.station_id) as bad:
            task = asyncio.create_task(run_fleet([healthy, failing]))
            try:
                await ok.wait("status")
                await asyncio.sleep(0.3)  # the healthy station's port is open (its status comes from the MQTT side)
                for n in range(3):
                    # The failing station fails again and again meanwhile; the fleet goes on.
                    await asyncio.sleep(0.5)
                    assert not task.done(), "the fleet process stopped with one station's failure"
                    healthy_module.send(beacon(0x00A00000 + n))
                    raws = await ok.wait("sightings", n + 1)
                    tags = {s.tag_id for raw in raws for s in SightingBatch.parse(raw).sightings}
                    assert f"{0x00A00000 + n:08X}" in tags
                assert bad.of("sightings") == [] and bad.of("status") == []

                broken.unlink()  # the installer removes the broken file: the next restart makes a new spool
                await bad.wait("status")
                await asyncio.sleep(0.3)
                failing_module.send(beacon(0x00B00000))
                [raw] = await bad.wait("sightings")
                assert [s.tag_id for s in SightingBatch.parse(raw).sightings] == ["00B00000"]
                assert not task.done()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        healthy_module.close()
        failing_module.close()
