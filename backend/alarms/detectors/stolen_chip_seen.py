"""Stolen chip seen: a passage or hot-list hit of a chip whose bike has an open theft report, since the theft."""

from __future__ import annotations

from typing import Any

import psycopg

from backend.alarms.detector import Detector
from backend.alarms.evidence import Committed, Evidence
from backend.alarms.kinds import AlarmKind
from backend.alarms.watch_list import WatchList

KIND = AlarmKind.STOLEN_CHIP_SEEN


def detect(_cur: psycopg.Cursor[Any], committed: Committed, watch: WatchList) -> list[Evidence]:
    """Passages and hot-list alerts of stolen chips seen at or after the time they were stolen."""
    stolen = {tag: w.stolen_at for tag, w in watch.items() if w.stolen_at is not None}
    if not stolen:
        return []
    p = committed.passages
    # A mobile reader's passage carries where the reader was: the alarm is shown there, not at the patrol car's
    # later place.
    found = [
        Evidence(KIND, tag, p.station_ids[i], p.first_seen_at[i], p.last_seen_at[i], *p.position(i))
        for i, tag in enumerate(p.tag_ids)
        if tag in stolen and p.last_seen_at[i] >= stolen[tag]
    ]
    # A station's tamper alert is no sighting: only its hot-list hits count here.
    found += [
        Evidence(KIND, a.tag_id, a.station_id, a.seen_at, a.seen_at, a.reader_lat, a.reader_lon)
        for a in committed.alerts
        if a.kind == "hotlist_hit" and a.tag_id in stolen and a.seen_at >= stolen[a.tag_id]
    ]
    return found


DETECTOR = Detector(KIND, detect, watches=True)
