"""Self-test step 5: is the system clock right? From what the board's time daemon says and what others' clocks say.

MQTT carries no broker time, so a round trip through the broker measures latency, not skew. What can be
compared: the NTP daemon's own offset (chrony), the backend's HTTP Date header (with --backend), and the
retained hot list's issued_at, which the backend stamped in the past: a hot list issued "in our future"
proves our clock is behind by at least that much.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.selftest.report import StepResult, format_duration
from protocol.messages import Hotlist

# A board without a real-time clock boots in 1970 (or at its image's build date) until NTP answers.
EARLIEST_SANE = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class NtpStatus:
    """What the board's time daemon says: synchronised or not, and its offset when it tells."""

    source: str
    synchronised: bool
    offset_s: float | None = None  # positive: our clock is ahead


@dataclass(frozen=True, slots=True)
class Skew:
    """Our clock minus another's, give or take uncertainty_s."""

    skew_s: float
    uncertainty_s: float


def parse_chronyc_tracking(text: str) -> NtpStatus | None:
    """NtpStatus from the output of `chronyc -n tracking`, None if it is not that."""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}
    if "Leap status" not in fields:
        return None
    offset_s = None
    words = fields.get("System time", "").split()
    if len(words) >= 3 and words[1] == "seconds":
        with contextlib.suppress(ValueError):
            offset_s = float(words[0]) * (-1 if words[2] == "slow" else 1)
    return NtpStatus("chrony", fields["Leap status"] != "Not synchronised", offset_s)


async def _command_output(*argv: str, timeout_s: float = 3.0) -> str | None:
    """stdout of a command that succeeded, else None (missing, failed or too slow)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    return out.decode(errors="replace") if proc.returncode == 0 else None


async def probe_ntp() -> NtpStatus | None:
    """Ask chrony, then systemd-timesyncd (timedatectl), whether the clock is NTP-synchronised."""
    out = await _command_output("chronyc", "-n", "tracking")
    if out is not None and (status := parse_chronyc_tracking(out)) is not None:
        return status
    out = await _command_output("timedatectl", "show", "-p", "NTPSynchronized", "--value")
    if out is not None and out.strip() in ("yes", "no"):
        return NtpStatus("timedatectl", out.strip() == "yes")
    return None


def skew_from_date_header(sent_at: datetime, received_at: datetime, date: datetime) -> Skew:
    """Our clock against a server's HTTP Date (whole seconds, truncated) read between sent_at and received_at."""
    round_trip_s = (received_at - sent_at).total_seconds()
    ours = sent_at + (received_at - sent_at) / 2
    theirs = date + timedelta(seconds=0.5)  # the server's time was somewhere in [date, date + 1 s)
    return Skew((ours - theirs).total_seconds(), 0.5 + round_trip_s / 2)


def check_clock(
    now: datetime,
    *,
    max_skew_s: float,
    ntp: NtpStatus | None,
    backend: Skew | str | None,
    hotlist: Hotlist | None,
    broker_connected: bool,
) -> StepResult:
    """Step 5 from what was gathered: backend is a Skew, why it could not be read, or None without --backend."""
    data: dict[str, Any] = {"now": now.isoformat()}
    if now.tzinfo is None or now.utcoffset() != timedelta(0):
        return StepResult(
            "clock",
            False,
            f"the clock gives {now.isoformat()}, not timezone-aware UTC",
            "a bug: the gateway must use timezone-aware UTC times",
            data,
        )
    if now < EARLIEST_SANE:
        return StepResult(
            "clock",
            False,
            f"the system clock says {now:%Y-%m-%d %H:%M:%S} UTC: it was never set",
            "the board has no real-time clock (or its battery is flat) and has not reached an NTP server: "
            "check that the backhaul lets NTP (UDP port 123) through, `timedatectl set-ntp true`, and look "
            "at `timedatectl` or `chronyc tracking`",
            data,
        )
    facts = [f"{now:%Y-%m-%d %H:%M:%S} UTC"]
    failures: list[str] = []
    warnings: list[str] = []
    measured = False

    if ntp is None:
        facts.append("NTP status unknown (no chronyc or timedatectl answer)")
    else:
        data["ntp"] = {"source": ntp.source, "synchronised": ntp.synchronised, "offset_s": ntp.offset_s}
        offset = f", offset {ntp.offset_s:+.3f} s" if ntp.offset_s is not None else ""
        facts.append(f"NTP {'synchronised' if ntp.synchronised else 'NOT synchronised'} ({ntp.source}{offset})")
        if ntp.offset_s is not None and ntp.synchronised:
            measured = True
            if abs(ntp.offset_s) > max_skew_s:
                failures.append(f"the clock is {ntp.offset_s:+.1f} s off NTP time")
        if not ntp.synchronised:
            warnings.append(
                "NTP is not synchronised yet: wait a minute after boot and run again; check that "
                "the backhaul lets NTP (UDP port 123) through"
            )

    if isinstance(backend, str):
        facts.append(f"backend clock not read ({backend})")
    elif backend is not None:
        measured = True
        data.update(backend_skew_s=round(backend.skew_s, 3), backend_uncertainty_s=round(backend.uncertainty_s, 3))
        facts.append(f"{backend.skew_s:+.1f} ± {backend.uncertainty_s:.1f} s against the backend's clock")
        if abs(backend.skew_s) - backend.uncertainty_s > max_skew_s:
            failures.append(f"the clock is {backend.skew_s:+.1f} s off the backend's clock")

    if hotlist is not None:
        ahead_s = (hotlist.issued_at - now).total_seconds()
        data["hotlist_issued_at"] = hotlist.issued_at.isoformat()
        if ahead_s > max_skew_s:
            failures.append(
                f"the clock is at least {ahead_s:.1f} s behind: the retained hot list was issued "
                f"at {hotlist.issued_at:%Y-%m-%d %H:%M:%S} UTC, later than our clock says"
            )
        else:
            facts.append(f"hot list issued {format_duration(max(-ahead_s, 0))} earlier (consistent)")
    elif broker_connected:
        facts.append("no broker-side time (no hot list)")
    else:
        facts.append("no broker-side time (no connection to the broker)")

    data["measured"] = measured
    value = "; ".join(facts)
    if failures:
        return StepResult(
            "clock",
            False,
            f"{'; '.join(failures)} ({value})",
            f"sightings carry UTC times, so the clock must be within {max_skew_s:g} s: check NTP "
            "(`timedatectl`, `chronyc tracking`, UDP port 123 open on the backhaul) and the real-time clock's "
            "battery",
            data,
        )
    if not measured:
        warnings.append(
            f"the skew could not be measured here (no NTP offset, no --backend): compare the time "
            f"above with a phone; it must be within {max_skew_s:g} s"
        )
    return StepResult("clock", True, value, " ".join(warnings), data)
