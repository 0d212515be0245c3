"""Beacons to sightings: one open passage per tag, closed by a gap or a maximum duration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.hotlist import HotList
from protocol.frames import Beacon, TagFlags
from protocol.messages import Alert, ReaderPosition, Sighting, format_tag, utcnow

Clock = Callable[[], datetime]
# A mobile reader's position at a time (gateway.gps.Gps.position_at), None without a fresh fix.
Locate = Callable[[datetime], ReaderPosition | None]
AlertKind = Literal["hotlist_hit", "tamper"]


@dataclass(slots=True)
class Passage:
    """One tag's open passage at this station, updated by each beacon."""

    tag_id: int
    first_seen_at: datetime
    last_seen_at: datetime
    beacons: int
    peak_rssi_dbm: int
    antenna: int
    flags: TagFlags
    hotlist_alerted: bool = False
    tamper_alerted: bool = False
    # A mobile reader's fix at the passage's strongest beacon so far (where the tag was nearest); not checkpointed.
    position: ReaderPosition | None = None

    def to_sighting(self) -> Sighting:
        """The closed passage as the wire Sighting."""
        return Sighting(
            tag_id=format_tag(self.tag_id),
            first_seen_at=self.first_seen_at,
            last_seen_at=self.last_seen_at,
            beacons=self.beacons,
            peak_rssi_dbm=self.peak_rssi_dbm,
            antenna=self.antenna,
            flags=int(self.flags),
            position=self.position,
        )


class Aggregator:
    """Turns beacons into sightings and urgent alerts; pure logic with an injectable clock."""

    def __init__(
        self,
        station_id: str,
        hotlist: HotList,
        *,
        passage_gap_s: float = 8.0,
        passage_max_s: float = 60.0,
        clock: Clock = utcnow,
        locate: Locate | None = None,
    ) -> None:
        self.station_id = station_id
        self.locate = locate  # None: a fixed station
        self.hotlist = hotlist
        self.gap = timedelta(seconds=passage_gap_s)
        self.max_duration = timedelta(seconds=passage_max_s)
        self.clock = clock
        self.beacons_total = 0
        # A mobile reader's sightings closed without a position (no fresh GPS fix while the tag was heard).
        self.sightings_without_fix = 0
        self._open: dict[int, Passage] = {}
        self._closed: list[Sighting] = []

    @property
    def open_count(self) -> int:
        """Passages still open."""
        return len(self._open)

    @property
    def open_passages(self) -> dict[int, Passage]:
        """The open passages by tag id (a live view: read, do not change)."""
        return self._open

    @property
    def closed_count(self) -> int:
        """Sightings closed and waiting for `take_closed`."""
        return len(self._closed)

    def add(self, beacon: Beacon, seen_at: datetime | None = None) -> list[Alert]:
        """Account one beacon; return the alerts it raises now (hot-list hit, first tamper)."""
        seen_at = seen_at or self.clock()
        self.beacons_total += 1
        passage = self._open.get(beacon.tag_id)
        if passage is not None and (
            seen_at - passage.last_seen_at >= self.gap or seen_at - passage.first_seen_at >= self.max_duration
        ):
            self._close(passage)
            passage = None
        if passage is None:
            passage = Passage(
                tag_id=beacon.tag_id,
                first_seen_at=seen_at,
                last_seen_at=seen_at,
                beacons=1,
                peak_rssi_dbm=beacon.rssi_dbm,
                antenna=beacon.antenna,
                flags=beacon.flags,
                position=self.locate(seen_at) if self.locate else None,
            )
            self._open[beacon.tag_id] = passage
        else:
            passage.beacons += 1
            passage.last_seen_at = max(passage.last_seen_at, seen_at)
            passage.flags |= beacon.flags
            if beacon.rssi_dbm > passage.peak_rssi_dbm:
                passage.peak_rssi_dbm = beacon.rssi_dbm
                passage.antenna = beacon.antenna
                # Where the reader was when the tag was nearest; a beacon without a fix keeps the last one.
                if self.locate is not None:
                    passage.position = self.locate(seen_at) or passage.position
            elif self.locate is not None and passage.position is None:
                passage.position = self.locate(seen_at)
        return self._alerts(passage, beacon, seen_at)

    def _alerts(self, passage: Passage, beacon: Beacon, seen_at: datetime) -> list[Alert]:
        alerts: list[Alert] = []
        # Checked on every beacon, not only the first: a list that arrives mid-passage still alerts.
        if not passage.hotlist_alerted and beacon.tag_id in self.hotlist:
            passage.hotlist_alerted = True
            alerts.append(self._alert("hotlist_hit", beacon, seen_at, self.hotlist.version))
        if not passage.tamper_alerted and TagFlags.TAMPER in beacon.flags:
            passage.tamper_alerted = True
            alerts.append(self._alert("tamper", beacon, seen_at, None))
        return alerts

    def _alert(self, kind: AlertKind, beacon: Beacon, seen_at: datetime, version: int | None) -> Alert:
        return Alert(
            station_id=self.station_id,
            kind=kind,
            tag_id=format_tag(beacon.tag_id),
            seen_at=seen_at,
            rssi_dbm=beacon.rssi_dbm,
            antenna=beacon.antenna,
            hotlist_version=version,
            position=self.locate(seen_at) if self.locate else None,
        )

    def _close(self, passage: Passage) -> None:
        del self._open[passage.tag_id]
        if self.locate is not None and passage.position is None:
            self.sightings_without_fix += 1
        self._closed.append(passage.to_sighting())

    def close_due(self, now: datetime | None = None) -> list[Sighting]:
        """Close passages silent for the gap or as long as the maximum; return all closed so far."""
        now = now or self.clock()
        for passage in list(self._open.values()):
            if now - passage.last_seen_at >= self.gap or now - passage.first_seen_at >= self.max_duration:
                self._close(passage)
        return self.take_closed()

    def close_all(self) -> list[Sighting]:
        """Close every open passage (shutdown); return all closed so far."""
        for passage in list(self._open.values()):
            self._close(passage)
        return self.take_closed()

    def restore(self, passages: list[Passage]) -> None:
        """Take back passages checkpointed before a restart; they go on or close as if never interrupted."""
        for passage in passages:
            self._open[passage.tag_id] = passage

    def take_closed(self) -> list[Sighting]:
        """Hand over the sightings closed so far, oldest first."""
        closed, self._closed = self._closed, []
        return closed
