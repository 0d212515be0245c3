"""What detectors read and find: the passages and alerts of a committed flush, and evidence of an alarm."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backend.alarms.kinds import AlarmKind


@dataclass(frozen=True, slots=True)
class Evidence:
    """A chip seen at a station between two times, as evidence of one kind of alarm."""

    kind: AlarmKind
    tag_id: int
    station_id: str
    first_seen_at: datetime
    last_seen_at: datetime
    # Where a mobile reader was when it saw the chip (None: a fixed station, whose place is the station's).
    reader_lat: float | None = None
    reader_lon: float | None = None


@dataclass(frozen=True, slots=True)
class Passages:
    """Many passages column by column (the ingest's hot path makes no object per row)."""

    tag_ids: list[int]
    station_ids: list[str]
    first_seen_at: list[datetime]
    last_seen_at: list[datetime]
    # The TagFlags each passage reported (protocol.frames.TagFlags bits).
    flags: list[int]
    # A mobile reader's position at a passage, by the passage's index (sparse: fixed stations' passages have none).
    positions: dict[int, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Passages:
        """No passages yet."""
        return cls([], [], [], [], [])

    def extend(self, other: Passages) -> None:
        """Append another's passages."""
        offset = len(self.tag_ids)
        self.tag_ids.extend(other.tag_ids)
        self.station_ids.extend(other.station_ids)
        self.first_seen_at.extend(other.first_seen_at)
        self.last_seen_at.extend(other.last_seen_at)
        self.flags.extend(other.flags)
        self.positions.update((offset + i, at) for i, at in other.positions.items())

    def append(
        self, tag_id: int, station_id: str, first: datetime, last: datetime, flags: int, at: dict[str, Any] | None
    ) -> None:
        """Add one passage, with a mobile reader's position (a ReaderPosition's fields) when it had one."""
        if at is not None:
            self.positions[len(self.tag_ids)] = (at["lat"], at["lon"])
        self.tag_ids.append(tag_id)
        self.station_ids.append(station_id)
        self.first_seen_at.append(first)
        self.last_seen_at.append(last)
        self.flags.append(flags)

    def position(self, i: int) -> tuple[float | None, float | None]:
        """The reader's position at passage i, or (None, None) for a fixed station's."""
        return self.positions.get(i, (None, None))

    def __len__(self) -> int:
        return len(self.tag_ids)


@dataclass(frozen=True, slots=True)
class StationAlert:
    """An alert a station sent at once (a hot-list hit, a tamper), as stored."""

    station_id: str
    kind: str
    tag_id: int
    seen_at: datetime
    reader_lat: float | None = None
    reader_lon: float | None = None


@dataclass(slots=True)
class Committed:
    """What committed flushes brought that was new: the passages stations closed and the alerts they sent."""

    passages: Passages = field(default_factory=Passages.empty)
    alerts: list[StationAlert] = field(default_factory=list)

    def extend(self, other: Committed) -> None:
        """Append another's passages and alerts."""
        self.passages.extend(other.passages)
        self.alerts.extend(other.alerts)

    def __len__(self) -> int:
        return len(self.passages) + len(self.alerts)
