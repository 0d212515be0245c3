"""Each self-test step on the station's selftest topic as it begins and as it completes, for the installer's page.

Messages from before the broker connection exists wait and leave, in order, once it is there (the runner connects
at the start of the run, so the page sees the radio steps, the wait for the test tag included, as they happen).
Publishing is a courtesy: a failure is logged and stops further publishing, never fails the self-test (the command's
output on the pole stays the source of truth).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from gateway.mqtt import Connection, MqttError
from gateway.selftest.report import STEPS, Report, StepResult
from protocol.messages import SelfTestStep, SelfTestStepStarted, SelfTestSummary
from protocol.topics import SELFTEST, station_topic

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """A random id for one run (16 hex digits)."""
    return secrets.token_hex(8)


def _measured(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and -128 <= value <= 127 else None


def step_message(station_id: str, run_id: str, seq: int, result: StepResult, at: datetime) -> SelfTestStep:
    """The selftest-topic message of one step's result."""
    return SelfTestStep(
        station_id=station_id,
        run_id=run_id,
        seq=seq,
        name=result.name,
        title=result.title,
        status=result.status,
        message=result.value[:2000],
        advice=result.advice[:2000],
        rssi_dbm=_measured(result.data, "rssi_dbm"),
        noise_floor_dbm=_measured(result.data, "noise_floor_dbm"),
        elapsed_s=round(max(result.elapsed_s, 0.0), 3),
        at=at,
    )


def started_message(
    station_id: str, run_id: str, seq: int, name: str, at: datetime, wait_s: float | None = None
) -> SelfTestStepStarted:
    """The selftest-topic message saying a step has begun (and how long it waits at most, if it waits)."""
    return SelfTestStepStarted(
        station_id=station_id, run_id=run_id, seq=seq, name=name, title=STEPS.get(name, ""), wait_s=wait_s, at=at
    )


def summary_message(report: Report) -> SelfTestSummary:
    """The selftest-topic message that closes a run."""
    counts: dict[Literal["pass", "warn", "fail", "skip"], int] = {}
    for step in report.steps:
        counts[step.status] = counts.get(step.status, 0) + 1
    return SelfTestSummary(
        station_id=report.station_id,
        run_id=report.run_id,
        seq=len(report.steps) + 1,
        result="passed" if report.ok else "failed",
        steps=len(report.steps),
        counts=counts,
        started_at=report.started_at,
        finished_at=report.finished_at,
    )


class StepPublisher:
    """Publishes one run's steps and summary (QoS 1, not retained) through `client()` once it gives a client."""

    def __init__(
        self,
        station_id: str,
        run_id: str,
        client: Callable[[], Connection | None],
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self.station_id = station_id
        self.run_id = run_id
        self.topic = station_topic(station_id, SELFTEST)
        self._client = client
        self._clock = clock
        self._pending: list[bytes] = []
        self._sending = asyncio.Lock()
        self._seq = 0
        self.published = 0
        self.gave_up: str | None = None  # why publishing stopped, if it did

    async def started(self, name: str, wait_s: float | None = None) -> None:
        """Queue the news that the next step has begun (it will have the next seq) and send what is queued."""
        message = started_message(self.station_id, self.run_id, self._seq + 1, name, self._clock(), wait_s)
        self._pending.append(message.to_json())
        await self._send()

    async def step(self, result: StepResult) -> None:
        """Queue a completed step and send what is queued if the broker connection is there."""
        self._seq += 1
        self._pending.append(step_message(self.station_id, self.run_id, self._seq, result, self._clock()).to_json())
        await self._send()

    async def summary(self, report: Report) -> None:
        """Queue the run's summary and send what is queued."""
        self._pending.append(summary_message(report).to_json())
        await self._send()

    async def flush(self) -> None:
        """Send what is queued, if the broker connection is there (the runner calls this once it connected)."""
        await self._send()

    async def _send(self) -> None:
        # One sender at a time: the runner's flush and a step's send may overlap, and the order must hold.
        async with self._sending:
            client = self._client()
            if client is None or self.gave_up is not None:
                return
            await self._send_queued(client)

    async def _send_queued(self, client: Connection) -> None:
        while self._pending:
            try:
                await client.publish(self.topic, self._pending[0], qos=1)  # within the connection's timeout
            except MqttError as exc:
                self.gave_up = str(exc) or type(exc).__name__
                log.warning(
                    "self-test steps are no longer sent to %s (the self-test goes on): %s", self.topic, self.gave_up
                )
                return
            self._pending.pop(0)
            self.published += 1
