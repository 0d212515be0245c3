"""What a v2 beacon that fails its chip's checks proves: the evidence of a cloned-chip alarm, for the police."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from backend.alarms.evidence import Evidence
from backend.alarms.kinds import AlarmKind


class Verdict(StrEnum):
    """What resolving one v2 beacon found."""

    OK = "ok"  # a chip's beacon, its MAC right and its counter moving forward
    UNKNOWN = "unknown"  # no active chip beacons that eid in the windows held
    BAD_MAC = "bad_mac"  # a known chip's eid with a MAC its key did not make: a forgery
    REPLAY = "replay"  # a chip's genuine beacon whose counter does not move forward, heard again later or elsewhere
    DUPLICATE = "duplicate"  # the same transmission heard by a second station within seconds: not an alarm


@dataclass(frozen=True, slots=True)
class Hearing:
    """One beacon of a chip as a station heard it: where, when, its counter and its bytes on the air."""

    station_id: str
    heard_at: datetime
    counter: int | None  # None when the MAC failed (the counter cannot be trusted, nor opened)
    window: int
    payload: bytes

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, the payload as hex."""
        return {
            "station_id": self.station_id,
            "heard_at": self.heard_at.isoformat(),
            "counter": self.counter,
            "window": self.window,
            "payload_hex": self.payload.hex(),
        }


@dataclass(frozen=True, slots=True)
class CloneEvidence:
    """Why a chip is believed cloned: the offending beacon and, for a replay, the chip's earlier beacon it repeats
    or falls behind; for a forgery, the chip's last good beacon if there was one."""

    tag_id: int
    verdict: Verdict
    offending: Hearing
    previous: Hearing | None

    def as_alarm(self) -> Evidence:
        """The evidence as the alarm store raises it (backend.alarms.store.raise_evidence), like the v1 detector's:
        the chip, the station of the offending beacon, and the span from the earlier hearing to it."""
        times = [self.offending.heard_at] + ([self.previous.heard_at] if self.previous else [])
        return Evidence(AlarmKind.CHIP_CLONED, self.tag_id, self.offending.station_id, min(times), max(times))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for the alarm's record and a case file."""
        return {
            "tag_id": self.tag_id,
            "verdict": self.verdict.value,
            "offending": self.offending.as_dict(),
            "previous": self.previous.as_dict() if self.previous else None,
        }
