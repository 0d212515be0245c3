"""What the self-test hands back: one StepResult per step, a Report for the run, and how both read."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import orjson

STEPS: dict[str, str] = {
    "serial": "serial port opens",
    "module": "radio module answers",
    "noise": "radio noise floor",
    "test_tag": "test tag is read",
    "clock": "clock is in sync",
    "broker": "broker accepts the station",
    "heartbeat": "heartbeat comes back",
    "backend": "backend shows it online",
}


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step's outcome: ok True (passed; advice, if any, is a warning), False (failed) or None (skipped)."""

    name: str
    ok: bool | None
    value: str
    advice: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def status(self) -> Literal["pass", "warn", "fail", "skip"]:
        """pass, warn (passed with advice), fail or skip."""
        if self.ok is None:
            return "skip"
        if not self.ok:
            return "fail"
        return "warn" if self.advice else "pass"

    @property
    def title(self) -> str:
        """What the step checks, in the installer's words."""
        return STEPS[self.name]

    def to_dict(self) -> dict[str, Any]:
        """The step as plain JSON-able data."""
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "ok": self.ok,
            "value": self.value,
            "advice": self.advice,
            "elapsed_s": round(self.elapsed_s, 3),
            "data": self.data,
        }


def skipped(name: str, why: str) -> StepResult:
    """A step not run, and why."""
    return StepResult(name, None, f"skipped: {why}")


async def timed(step: Awaitable[StepResult]) -> StepResult:
    """The step's result with how long it took."""
    started = time.monotonic()
    result = await step
    return replace(result, elapsed_s=time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Report:
    """A whole run: the station, when, every step in order, and the run's id on the selftest topic."""

    station_id: str
    started_at: datetime
    finished_at: datetime
    steps: list[StepResult]
    run_id: str = ""

    @property
    def ok(self) -> bool:
        """True when no step failed (warnings pass; a skip without a failure is the optional backend check)."""
        return all(s.ok is not False for s in self.steps)

    @property
    def exit_code(self) -> int:
        """0 when every step passed, 1 otherwise."""
        return 0 if self.ok else 1

    def counts(self) -> Counter[str]:
        """Steps by status."""
        return Counter(s.status for s in self.steps)

    def to_json(self) -> bytes:
        """The machine-readable report."""
        return orjson.dumps(
            {
                "station_id": self.station_id,
                "run_id": self.run_id,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "ok": self.ok,
                "counts": dict(self.counts()),
                "steps": [s.to_dict() for s in self.steps],
            },
            option=orjson.OPT_INDENT_2,
        )


_MARKS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}
_INDENT = " " * 13


def format_step(result: StepResult, index: int, total: int = len(STEPS)) -> str:
    """One step as the installer reads it: a result line, then the advice when there is some."""
    line = f"[{index}/{total}] {_MARKS[result.status]}  {result.title:<27} {result.value}"
    if result.advice:
        line += f"\n{_INDENT}-> {result.advice}"
    return line


def format_prompt(text: str) -> str:
    """An instruction to the installer, between step lines."""
    return f"{_INDENT}.. {text}"


def format_summary(report: Report) -> str:
    """The closing line of a run."""
    counts = report.counts()
    words = (("pass", "passed"), ("warn", "warned"), ("fail", "failed"), ("skip", "skipped"))
    parts = [f"{counts[k]} {w}" for k, w in words if counts[k]]
    return f"{'PASS' if report.ok else 'FAIL'}: station {report.station_id}: {', '.join(parts)}"


def format_duration(seconds: float) -> str:
    """42 s, 7 min, 1 h 02 min, 3 d 4 h."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60 % 60, seconds // 3600 % 24, seconds // 86400
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
