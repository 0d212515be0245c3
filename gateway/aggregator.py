"""Beacons to sightings: one open passage per tag, closed by a gap or a maximum duration.

A v1 chip's passage is keyed by its tag id; a v2 chip's by the ephemeral id it beacons (protocol/beacon_v2.py), the
only name a station, which holds no chip keys, has for it. A v2 chip's eid changes with its window, so a passage that
spans a window change closes as two sightings, each with its own eid's beacons (the backend joins them again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.hotlist import HotList
from protocol.beacon_v2 import heard
from protocol.frames import Beacon, BeaconV2, TagFlags
from protocol.messages import Alert, ReaderPosition, Sighting, format_tag, utcnow

Clock = Callable[[], datetime]
# A mobile reader's position at a time (gateway.gps.Gps.position_at), None without a fresh fix.
Locate = Callable[[datetime], ReaderPosition | None]
AlertKind = Literal["hotlist_hit", "tamper"]
# What a station calls a chip: a v1 tag id, or a v2 chip's ephemeral id (8 bytes, one window's).
TagKey = int | bytes


@dataclass(slots=True)
class Passage:
    """One tag's open passage at this station, updated by each beacon."""

    tag: TagKey
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
    # A v2 chip's passage: its first and its latest beacon as they were on the air, for the backend to resolve and
    # check (MAC, counter); None for a v1 chip, and the latest None while the passage has one beacon.
    first_heard: bytes | None = None
    last_heard: bytes | None = None

    def to_sighting(self) -> Sighting:
        """The closed passage as the wire Sighting: a v1 chip's names its tag id, a v2 chip's the beacons heard."""
        if isinstance(self.tag, bytes):
            assert self.first_heard is not None, "a v2 passage keeps its first beacon"
            first = self.first_heard.hex()
            return self._sighting(None, [first] if self.last_heard is None else [first, self.last_heard.hex()])
        return self._sighting(format_tag(self.tag), None)

    def _sighting(self, tag_id: str | None, heard: list[str] | None) -> Sighting:
        return Sighting(
            tag_id=tag_id,
            heard=heard,
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
        self.beacons_total = 0  # v1 and v2
        self.beacons_v2_total = 0
        # A mobile reader's sightings closed without a position (no fresh GPS fix while the tag was heard).
        self.sightings_without_fix = 0
        self._open: dict[TagKey, Passage] = {}
        self._closed: list[Sighting] = []

    @property
    def open_count(self) -> int:
        """Passages still open."""
        return len(self._open)

    @property
    def open_passages(self) -> dict[TagKey, Passage]:
        """The open passages by tag id or ephemeral id (a live view: read, do not change)."""
        return self._open

    @property
    def closed_count(self) -> int:
        """Sightings closed and waiting for `take_closed`."""
        return len(self._closed)

    def add(self, beacon: Beacon, seen_at: datetime | None = None) -> list[Alert]:
        """Account one v1 beacon; return the alerts it raises now (hot-list hit, first tamper)."""
        seen_at = seen_at or self.clock()
        passage = self._account(beacon.tag_id, beacon, seen_at)
        return self._alerts(passage, beacon, seen_at)

    def add_v2(self, beacon: BeaconV2, seen_at: datetime | None = None) -> list[Alert]:
        """Account one v2 beacon by its ephemeral id, keeping its bytes as the passage's first or latest beacon;
        return the alerts it raises now (its eid on the hot list, first tamper)."""
        seen_at = seen_at or self.clock()
        self.beacons_v2_total += 1
        passage = self._account(beacon.eid, beacon, seen_at)
        air = heard(beacon).to_bytes()
        if passage.first_heard is None:
            passage.first_heard = air
        else:
            passage.last_heard = air
        return self._alerts(passage, beacon, seen_at)

    def _account(self, tag: TagKey, beacon: Beacon | BeaconV2, seen_at: datetime) -> Passage:
        """The tag's open passage with this beacon counted in (a new one if there was none, or it had ended)."""
        self.beacons_total += 1
        passage = self._open.get(tag)
        if passage is not None and (
            seen_at - passage.last_seen_at >= self.gap or seen_at - passage.first_seen_at >= self.max_duration
        ):
            self._close(passage)
            passage = None
        if passage is None:
            passage = Passage(
                tag=tag,
                first_seen_at=seen_at,
                last_seen_at=seen_at,
                beacons=1,
                peak_rssi_dbm=beacon.rssi_dbm,
                antenna=beacon.antenna,
                flags=beacon.flags,
                position=self.locate(seen_at) if self.locate else None,
            )
            self._open[tag] = passage
        else:
            passage.beacons += 1
            # A comparison rather than max(): the builtin's call cost v1 beacons what sharing _account with v2 added.
            if seen_at > passage.last_seen_at:
                passage.last_seen_at = seen_at
            # Most beacons carry no flags: an enum's | (half a microsecond) only for those that do.
            if beacon.flags:
                passage.flags |= beacon.flags
            if beacon.rssi_dbm > passage.peak_rssi_dbm:
                passage.peak_rssi_dbm = beacon.rssi_dbm
                passage.antenna = beacon.antenna
                # Where the reader was when the tag was nearest; a beacon without a fix keeps the last one.
                if self.locate is not None:
                    passage.position = self.locate(seen_at) or passage.position
            elif self.locate is not None and passage.position is None:
                passage.position = self.locate(seen_at)
        return passage

    def _alerts(self, passage: Passage, beacon: Beacon | BeaconV2, seen_at: datetime) -> list[Alert]:
        alerts: list[Alert] = []
        # Checked on every beacon, not only the first: a list that arrives mid-passage still alerts.
        if not passage.hotlist_alerted and passage.tag in self.hotlist:
            passage.hotlist_alerted = True
            alerts.append(self._alert("hotlist_hit", beacon, seen_at, self.hotlist.version))
        if beacon.flags and not passage.tamper_alerted and TagFlags.TAMPER in beacon.flags:
            passage.tamper_alerted = True
            alerts.append(self._alert("tamper", beacon, seen_at, None))
        return alerts

    def _alert(self, kind: AlertKind, beacon: Beacon | BeaconV2, seen_at: datetime, version: int | None) -> Alert:
        # A v2 alert names no chip (the station cannot): it carries the beacon that raised it, for the backend.
        if isinstance(beacon, Beacon):
            tag_id, air = format_tag(beacon.tag_id), None
        else:
            tag_id, air = None, heard(beacon).to_bytes().hex()
        return Alert(
            station_id=self.station_id,
            kind=kind,
            tag_id=tag_id,
            heard=air,
            seen_at=seen_at,
            rssi_dbm=beacon.rssi_dbm,
            antenna=beacon.antenna,
            hotlist_version=version,
            position=self.locate(seen_at) if self.locate else None,
        )

    def _close(self, passage: Passage) -> None:
        del self._open[passage.tag]
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
            self._open[passage.tag] = passage

    def take_closed(self) -> list[Sighting]:
        """Hand over the sightings closed so far, oldest first."""
        closed, self._closed = self._closed, []
        return closed
