"""The radio side: frames off a pty, rejects counted, a vanished port reopened."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from gateway.radio import Radio, Reception
from protocol.frames import Beacon, ModuleStatus, encode
from tests.gateway.harness import FakeModule, beacon, eventually

pytestmark = pytest.mark.anyio


async def receive(radio: Radio, count: int, timeout_s: float = 15.0) -> list[Reception]:
    """The next `count` frames from the radio."""
    async with asyncio.timeout(timeout_s):
        return [await radio.get() for _ in range(count)]


async def test_frames_from_the_port_arrive_in_order_with_a_utc_time(module: FakeModule) -> None:
    radio = Radio(module.path, 115200, read_timeout_s=0.05)
    task = asyncio.create_task(radio.run())
    try:
        await eventually(lambda: radio.opened)
        module.send(beacon(1), ModuleStatus(noise_floor_dbm=-101, firmware=3, uptime_s=9), beacon(2))

        got = await receive(radio, 3)

        assert [type(r.frame) for r in got] == [Beacon, ModuleStatus, Beacon]
        assert [r.frame.tag_id for r in got if isinstance(r.frame, Beacon)] == [1, 2]
        assert got[0].received_at.utcoffset() is not None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_garbage_is_counted_and_logged_with_its_bytes_and_frames_around_it_survive(
    module: FakeModule, caplog: pytest.LogCaptureFixture
) -> None:
    radio = Radio(module.path, 115200, read_timeout_s=0.05)
    task = asyncio.create_task(radio.run())
    try:
        await eventually(lambda: radio.opened)
        corrupt = bytearray(encode(beacon(7)))
        corrupt[6] ^= 0x01
        with caplog.at_level(logging.WARNING, logger="gateway.radio"):
            module.send_raw(encode(beacon(6)) + b"\x01\x02\x03" + bytes(corrupt) + encode(beacon(8)))
            got = await receive(radio, 2)

        assert [r.frame.tag_id for r in got if isinstance(r.frame, Beacon)] == [6, 8]
        assert radio.rejected["garbage"] == 1
        assert radio.rejected["crc"] == 1
        assert radio.rejected_total == 2
        assert "01 02 03" in caplog.text
        assert bytes(corrupt).hex(" ") in caplog.text
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_port_that_goes_away_and_comes_back_is_reopened(tmp_path: Path) -> None:
    link = tmp_path / "ttyRADIO"
    first = FakeModule()
    os.symlink(first.path, link)
    radio = Radio(str(link), 115200, read_timeout_s=0.05, reopen_min_s=0.05, reopen_max_s=0.2)
    task = asyncio.create_task(radio.run())
    second: FakeModule | None = None
    try:
        await eventually(lambda: radio.opened == 1)
        first.send(beacon(1))
        assert (await receive(radio, 1))[0].frame == beacon(1)

        first.close()  # unplugged
        await eventually(lambda: radio.port_errors >= 1, what="the read to fail")
        await asyncio.sleep(0.3)  # a few failed reopen attempts
        assert not task.done()

        second = FakeModule()  # plugged back in, under the same name
        os.remove(link)
        os.symlink(second.path, link)
        await eventually(lambda: radio.opened == 2, what="the port to be reopened")
        second.send(beacon(2))

        assert (await receive(radio, 1))[0].frame == beacon(2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        first.close()
        if second is not None:
            second.close()
