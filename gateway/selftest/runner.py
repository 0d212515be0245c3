"""The self-test's order of steps and what depends on what."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from datetime import datetime

import serial

from gateway.selftest.clock import NtpStatus, check_clock, probe_ntp
from gateway.selftest.publisher import StepPublisher, new_run_id
from gateway.selftest.radio_side import RadioSide
from gateway.selftest.report import (
    Report,
    StepResult,
    skipped,
    timed,
)
from gateway.selftest.settings import SelfTestSettings
from gateway.selftest.uplink_side import UplinkSide
from gateway.settings import GatewaySettings
from protocol.messages import utcnow

log = logging.getLogger(__name__)


class SelfTest:
    """The commissioning self-test of one station: `async for result in steps()` or `await run()`.

    clock, ntp and open_serial are there for tests (a board in 1970, chrony's answers, a port we may not open).
    prompt receives instructions for the installer (hold the test tag…) when a step needs them.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        options: SelfTestSettings | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        ntp: Callable[[], Awaitable[NtpStatus | None]] = probe_ntp,
        open_serial: Callable[..., serial.SerialBase] = serial.serial_for_url,
        prompt: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or SelfTestSettings()
        self.clock = clock
        self.ntp = ntp
        self.open_serial = open_serial
        self.prompt = prompt or (lambda text: log.info("%s", text))
        self.run_id: str | None = None
        self.report: Report | None = None

    async def run(self, on_result: Callable[[StepResult], object] | None = None) -> Report:
        """Run every step; call on_result (a function or coroutine function) with each as it completes."""
        async with contextlib.aclosing(self.steps()) as steps:
            async for result in steps:
                if on_result is not None:
                    outcome = on_result(result)
                    if inspect.isawaitable(outcome):
                        await outcome
        assert self.report is not None
        return self.report

    async def steps(self) -> AsyncGenerator[StepResult, None]:
        """Yield each step's result as it completes (wrap in contextlib.aclosing if you may stop early).

        A step whose input failed is skipped with the reason: no serial port skips the radio steps, but the
        uplink is still tested; no broker skips the heartbeat. Each step is also published on the station's
        selftest topic under a new `run_id`, and `report` holds the whole run once the last step is done.
        """
        self.run_id, self.report = new_run_id(), None
        started_at = self.clock()
        results: list[StepResult] = []
        radio = RadioSide(
            self.settings, self.options, clock=self.clock, open_serial=self.open_serial, prompt=self.prompt
        )
        async with contextlib.AsyncExitStack() as stack:
            uplink = UplinkSide(self.settings, self.options, stack, clock=self.clock)
            publisher = StepPublisher(self.settings.station_id, self.run_id, lambda: uplink.client, clock=self.clock)

            # Connect to the broker while the radio steps run, so that the installer's page sees them (the wait for
            # the test tag above all) as they happen, not after the clock step; the broker step reports this session.
            async def connect_then_send() -> None:
                await uplink.session()
                await publisher.flush()

            connecting = asyncio.create_task(connect_then_send())
            try:
                async with contextlib.aclosing(self._checks(radio, uplink, publisher.started)) as checks:
                    async for result in checks:
                        results.append(result)
                        await publisher.step(result)
                        yield result
            finally:
                if not connecting.done():
                    connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
            self.report = Report(self.settings.station_id, started_at, self.clock(), results, self.run_id)
            await publisher.summary(self.report)

    async def _checks(
        self, radio: RadioSide, uplink: UplinkSide, begin: Callable[..., Awaitable[None]]
    ) -> AsyncGenerator[StepResult, None]:
        """The steps in order, each skipped with the reason when what it needs failed; `begin(name)` announces each
        step that runs (not those skipped)."""
        await begin("serial")
        started = time.monotonic()
        opened, heard = await radio.open_port()
        yield replace(opened, elapsed_s=time.monotonic() - started)
        if heard is None:
            for name in ("module", "noise", "test_tag"):
                yield skipped(name, "the serial port did not open")
        else:
            try:
                await begin("module")
                module = await timed(radio.module(heard))
                yield module
                if module.ok:
                    await begin("noise")
                    yield await timed(radio.noise(heard))
                    await begin("test_tag", self.options.tag_timeout_s)
                    yield await timed(radio.test_tag(heard))
                else:
                    for name in ("noise", "test_tag"):
                        yield skipped(name, "the radio module did not answer")
            finally:
                await heard.stop()
        await begin("clock")
        yield await timed(self._clock(uplink))
        await begin("broker")
        broker = await timed(uplink.broker())
        yield broker
        if not broker.ok:
            yield skipped("heartbeat", "the broker step failed")
            yield skipped("backend", "the broker step failed")
            return
        noise = radio.module_status.noise_floor_dbm if radio.module_status else None
        await begin("heartbeat")
        heartbeat = await timed(uplink.heartbeat(noise))
        yield heartbeat
        if self.options.backend_url is None:
            yield skipped("backend", "no --backend given")
        elif not heartbeat.ok:
            yield skipped("backend", "the heartbeat did not come back from the broker")
        else:
            await begin("backend")
            yield await timed(uplink.backend())

    async def _clock(self, uplink: UplinkSide) -> StepResult:
        now = self.clock()
        ntp = await self.ntp()
        backend = await uplink.backend_clock() if self.options.backend_url is not None else None
        session = await uplink.session()
        return check_clock(
            now,
            max_skew_s=self.options.clock_max_skew_s,
            ntp=ntp,
            backend=backend,
            hotlist=session.hotlist,
            broker_connected=session.client is not None,
        )
