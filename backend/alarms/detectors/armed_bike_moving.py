"""Armed bike moving: a passage in which the chip of a bike its owner armed felt the bike move."""

from __future__ import annotations

from typing import Any

import psycopg

from backend.alarms.detector import Detector
from backend.alarms.evidence import Committed, Evidence
from backend.alarms.kinds import AlarmKind
from backend.alarms.watch_list import WatchList
from protocol.frames import TagFlags

# A plain int: testing an IntFlag member per row costs far more than testing an int.
_MOTION = int(TagFlags.MOTION)
KIND = AlarmKind.ARMED_BIKE_MOVING


def detect(_cur: psycopg.Cursor[Any], committed: Committed, watch: WatchList) -> list[Evidence]:
    """Passages with the motion flag of chips of armed bikes (a stolen bike's chip raises 'stolen' instead)."""
    armed = {tag for tag, w in watch.items() if w.armed and w.stolen_at is None}
    if not armed:
        return []
    p = committed.passages
    return [
        Evidence(KIND, tag, p.station_ids[i], p.first_seen_at[i], p.last_seen_at[i])
        for i, tag in enumerate(p.tag_ids)
        if tag in armed and p.flags[i] & _MOTION
    ]


DETECTOR = Detector(KIND, detect, watches=True)
