"""The time window around the receive time that a station's sighting, alert and status times must fall in.

A time far ahead is a station's clock gone wrong (a year-9999 sighting cannot be read back; a 2100 one freezes the
chip's position for the cloned-chip check; a 2099 status freezes the station's health). The window behind is long on
purpose: a gateway's spool holds days, for a quiet station weeks, of sightings while its uplink is down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from backend.settings import BackendSettings
from protocol.messages import Alert, StationStatus

REASON = "time window"


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """How far ahead of and behind the receive time a reported time may be."""

    ahead: timedelta = timedelta(minutes=5)
    behind: timedelta = timedelta(days=90)

    @classmethod
    def of(cls, settings: BackendSettings) -> TimeWindow:
        """The window the settings describe (behind: the shorter of the age limit and the retention period)."""
        days = settings.ingest_max_age_days
        if settings.retention_days is not None:
            days = min(days, settings.retention_days)
        return cls(timedelta(seconds=settings.ingest_max_clock_skew_s), timedelta(days=days))

    def refusal(self, message: dict[str, Any] | Alert | StationStatus, received_at: datetime) -> str | None:
        """Why the message's times are refused (the first time outside the window), or None."""
        low, high = received_at - self.behind, received_at + self.ahead
        if isinstance(message, dict):
            sightings = message["sightings"]
            times = [("sent_at", message["sent_at"])]
            # min/max first (the hot path: nearly every batch passes); the index only for a refusal.
            if sightings:
                firsts = [s["first_seen_at"] for s in sightings]
                lasts = [s["last_seen_at"] for s in sightings]
                if min(firsts) < low or max(firsts) > high or min(lasts) < low or max(lasts) > high:
                    times += _sighting_times(sightings)
                # A mobile reader's fix times too: a far-future one would freeze the reader's place on the map (its
                # position moves only to a newer fix).
                times += [
                    (f"sightings.{i}.position.fix_at", s["position"]["fix_at"])
                    for i, s in enumerate(sightings)
                    if s.get("position")
                ]
        elif isinstance(message, Alert):
            times = [("seen_at", message.seen_at)]
            if message.position is not None:
                times.append(("position.fix_at", message.position.fix_at))
        else:
            times = [] if message.sent_at is None else [("sent_at", message.sent_at)]
        for where, at in times:
            if at > high:
                return f"{REASON}: {where} {at.isoformat()} is more than {_span(self.ahead)} after the receive time"
            if at < low:
                return f"{REASON}: {where} {at.isoformat()} is more than {_span(self.behind)} before the receive time"
        return None


def _sighting_times(sightings: Iterable[dict[str, Any]]) -> list[tuple[str, datetime]]:
    out: list[tuple[str, datetime]] = []
    for i, s in enumerate(sightings):
        out += [
            (f"sightings.{i}.first_seen_at", s["first_seen_at"]),
            (f"sightings.{i}.last_seen_at", s["last_seen_at"]),
        ]
    return out


def _span(span: timedelta) -> str:
    seconds = span.total_seconds()
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds:g} s"
