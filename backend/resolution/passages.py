"""Passages split by a window change joined again.

A station aggregates v2 beacons by ephemeral id (it knows no keys), so a bike that stays in range while its chip
moves to the next window leaves two sightings: one per eid. Once both resolve to the same tag, they are one passage.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Final

# The gateway's passage gap (gateway.aggregator.Aggregator's passage_gap_s): beacons further apart are two passages.
DEFAULT_PASSAGE_GAP_S: Final = 8.0


def join_window_splits(
    sightings: Iterable[dict[str, Any]], passage_gap_s: float = DEFAULT_PASSAGE_GAP_S
) -> list[dict[str, Any]]:
    """Join resolved sightings of one chip at one station that a window change split; keep every other one as is
    (the same dict: a joined row is a new one).

    Rows have the writer's fields (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna,
    flags, and batch_seq if present) plus `window`, the window their beacons resolved in. Two rows are joined when
    they are of the same chip and station, in different windows, and the second starts within `passage_gap_s` of
    the first's end: the first's first_seen_at, the last's last_seen_at, beacons summed, the peak RSSI with its
    antenna, the flags of either (as the gateway ORs them within a passage), the first's batch_seq. A row without a
    window (a v1 chip's) is never joined: a gateway's passage cut at its maximum length must stay cut. The result is
    in order of first_seen_at per (station, tag) and keeps the input's order of (station, tag) groups.
    """
    gap = timedelta(seconds=passage_gap_s)
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for s in sightings:
        groups.setdefault((s["station_id"], s["tag_id"]), []).append(s)
    out: list[dict[str, Any]] = []
    for rows in groups.values():
        if len(rows) == 1:  # most chips pass a station once in a flush
            out.append(rows[0])
            continue
        rows.sort(key=_first_seen_at)
        current = rows[0]
        for row in rows[1:]:
            if _split_by_window(current, row, gap):
                current = _joined(current, row)
            else:
                out.append(current)
                current = row
        out.append(current)
    return out


def _first_seen_at(row: dict[str, Any]) -> Any:
    return row["first_seen_at"]


def _split_by_window(a: dict[str, Any], b: dict[str, Any], gap: timedelta) -> bool:
    wa, wb = a.get("window"), b.get("window")
    return wa is not None and wb is not None and wa != wb and b["first_seen_at"] - a["last_seen_at"] <= gap


def _joined(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    joined = dict(a)
    joined["last_seen_at"] = max(a["last_seen_at"], b["last_seen_at"])
    joined["beacons"] = a["beacons"] + b["beacons"]
    if b["peak_rssi_dbm"] > a["peak_rssi_dbm"]:
        joined["peak_rssi_dbm"], joined["antenna"] = b["peak_rssi_dbm"], b["antenna"]
    joined["flags"] = a["flags"] | b["flags"]
    joined["window"] = b["window"]  # the latest: a third part joins on the next window change
    return joined
