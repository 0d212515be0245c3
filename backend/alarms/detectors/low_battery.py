"""Low battery: a passage whose chip reported its battery low."""

from __future__ import annotations

from typing import Any

import psycopg

from backend.alarms.detector import Detector
from backend.alarms.evidence import Committed, Evidence
from backend.alarms.kinds import AlarmKind
from backend.alarms.watch_list import WatchList
from protocol.frames import TagFlags

# A plain int: testing an IntFlag member per row costs far more than testing an int.
_LOW_BATTERY = int(TagFlags.LOW_BATTERY)
KIND = AlarmKind.LOW_BATTERY


def detect(_cur: psycopg.Cursor[Any], committed: Committed, _watch: WatchList) -> list[Evidence]:
    """Passages with the low-battery flag (only chips bound to a bike raise an alarm)."""
    p = committed.passages
    return [
        Evidence(KIND, p.tag_ids[i], p.station_ids[i], p.first_seen_at[i], p.last_seen_at[i])
        for i, flags in enumerate(p.flags)
        if flags & _LOW_BATTERY
    ]


DETECTOR = Detector(KIND, detect)
