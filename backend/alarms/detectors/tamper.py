"""Tamper: a passage whose chip reported its case opened, or a station's tamper alert."""

from __future__ import annotations

from typing import Any

import psycopg

from backend.alarms.detector import Detector
from backend.alarms.evidence import Committed, Evidence
from backend.alarms.kinds import AlarmKind
from backend.alarms.watch_list import WatchList
from protocol.frames import TagFlags

# A plain int: testing an IntFlag member per row costs far more than testing an int.
_TAMPER = int(TagFlags.TAMPER)
KIND = AlarmKind.TAMPER


def detect(_cur: psycopg.Cursor[Any], committed: Committed, _watch: WatchList) -> list[Evidence]:
    """Passages with the tamper flag, and tamper alerts (only chips bound to a bike raise an alarm)."""
    p = committed.passages
    found = [
        Evidence(KIND, p.tag_ids[i], p.station_ids[i], p.first_seen_at[i], p.last_seen_at[i])
        for i, flags in enumerate(p.flags)
        if flags & _TAMPER
    ]
    found += [
        Evidence(KIND, a.tag_id, a.station_id, a.seen_at, a.seen_at) for a in committed.alerts if a.kind == "tamper"
    ]
    return found


DETECTOR = Detector(KIND, detect)
