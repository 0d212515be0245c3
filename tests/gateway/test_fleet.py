"""Several stations in one event loop, each with its own port, connection and spool."""

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


async def test_a_fleet_runs_each_station_on_its_own_port_and_spool(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    modules = [FakeModule() for _ in range(3)]
    ids = [f"{topic_prefix}-{i}" for i in range(3)]
    fleet = [
        fast_settings(sid, m.path, broker.url, tmp_path / f"{sid}.spool", passage_gap_s=0.2)
        for sid, m in zip(ids, modules, strict=True)
    ]
    try:
        async with contextlib.AsyncExitStack() as stack:
            watchers = [await stack.enter_async_context(watching(broker, sid)) for sid in ids]
            task = asyncio.create_task(run_fleet(fleet))
            try:
                for w in watchers:
                    await w.wait("status")
                await asyncio.sleep(0.3)  # ports open (status comes from the MQTT side)
                for i, m in enumerate(modules):
                    m.send(beacon(0x100 + i))
                for i, w in enumerate(watchers):
                    [raw] = await w.wait("sightings")
                    batch = SightingBatch.parse(raw)
                    assert batch.station_id == ids[i]
                    assert [s.tag_id for s in batch.sightings] == [f"{0x100 + i:08X}"]
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
    finally:
        for m in modules:
            m.close()
    assert all((tmp_path / f"{sid}.spool").exists() for sid in ids)


async def test_a_fleet_refuses_two_stations_with_one_id(tmp_path: Path) -> None:
    settings = fast_settings("same", "/dev/null", "mqtt://127.0.0.1:1", tmp_path / "a.spool")
    with pytest.raises(ValueError, match="unique"):
        await run_fleet([settings, settings.model_copy(update={"spool_path": tmp_path / "b.spool"})])
