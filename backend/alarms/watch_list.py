"""The watch list: the chips the alarm engine watches, and why (their bike is stolen, or armed by its owner)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg


@dataclass(frozen=True, slots=True)
class Watch:
    """Why a chip is watched: its bike is stolen (since when), or armed by its owner."""

    stolen_at: datetime | None
    armed: bool


WatchList = dict[int, Watch]


def load(cur: psycopg.Cursor[Any]) -> WatchList:
    """Chips of bikes with an open theft report or armed by their owner: one query per detection round."""
    # Two small index scans (open theft reports; armed bikes), never a pass over every chip.
    rows = cur.execute(
        "SELECT c.tag_id, t.stolen_at, false FROM theft_reports t JOIN chips c USING (bike_id)"
        " WHERE t.recovered_at IS NULL"
        " UNION ALL"
        " SELECT c.tag_id, NULL, true FROM bikes b JOIN chips c USING (bike_id) WHERE b.armed"
        " AND NOT EXISTS (SELECT 1 FROM theft_reports t WHERE t.bike_id = b.bike_id AND t.recovered_at IS NULL)"
    ).fetchall()
    return {int(r[0]): Watch(r[1], bool(r[2])) for r in rows}
