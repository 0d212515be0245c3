"""The watch list: the chips the alarm engine watches, and why (their bike is stolen, or armed by its owner)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg


@dataclass(frozen=True, slots=True)
class Watch:
    """Why a chip is watched: its bike is stolen (since when: the theft, but at most the police look-back before its
    report, as backend.access.stolen_visible_since), or armed by its owner."""

    stolen_at: datetime | None
    armed: bool


WatchList = dict[int, Watch]


def load(cur: psycopg.Cursor[Any], theft_lookback: timedelta) -> WatchList:
    """Chips of bikes with an open theft report or armed by their owner: one query per detection round.

    A back-dated report does not make a passage from long before it (a station's backlog arriving late) a stolen
    chip's alarm, whose trail police see without a case number: a stolen bike is watched from when police may see
    it."""
    # Two small index scans (open theft reports; armed bikes), never a pass over every chip.
    rows = cur.execute(
        "SELECT c.tag_id, greatest(t.stolen_at, t.reported_at - %s), false FROM theft_reports t"
        " JOIN chips c USING (bike_id) WHERE t.recovered_at IS NULL"
        " UNION ALL"
        " SELECT c.tag_id, NULL, true FROM bikes b JOIN chips c USING (bike_id) WHERE b.armed"
        " AND NOT EXISTS (SELECT 1 FROM theft_reports t WHERE t.bike_id = b.bike_id AND t.recovered_at IS NULL)",
        (theft_lookback,),
    ).fetchall()
    return {int(r[0]): Watch(r[1], bool(r[2])) for r in rows}
