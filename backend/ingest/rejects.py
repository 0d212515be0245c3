"""Why the ingest refuses a message: a fixed set of kinds, each message kept in rejected_messages with its raw bytes.

The kind is what is counted (IngestCounters.rejected) and stored (rejected_messages.kind); the reason beside it says
what exactly was wrong.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

import psycopg

Kind = Literal["invalid", "topic", "station mismatch", "unknown station", "time window", "conflict", "database"]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
# A reason quotes what was wrong, which may be the sender's text: enough to read, bounded.
MAX_REASON_CHARS: Final = 1000

# The reasons the ingest itself writes start with their kind; pydantic's start with the field at fault.
_PREFIXES: Final[tuple[tuple[str, Kind], ...]] = (
    ("topic:", "topic"),
    ("time window:", "time window"),
    ("conflict:", "conflict"),
    ("unknown station ", "unknown station"),
    ("database refused", "database"),
)


def conflict_reason(station_id: str, batch_seq: int, stored: bytes, refused: bytes) -> str:
    """The reason kept with a batch that reuses a stored (station_id, batch_seq) with other content."""
    return (
        f"conflict: batch_seq {batch_seq} of station {station_id} is already stored with other content"
        f" (sha256 {stored.hex()[:16]}… kept, {refused.hex()[:16]}… refused)"
    )


def kind_of(reason: str) -> Kind:
    """The fixed kind of a reject reason."""
    for prefix, kind in _PREFIXES:
        if reason.startswith(prefix):
            return kind
    if reason.startswith("station_id ") and "does not match topic station" in reason:
        return "station mismatch"
    return "invalid"


async def prune(conn: psycopg.AsyncConnection[Any], retention_days: int) -> int:
    """Delete rejected messages older than the retention period; returns how many."""
    cur = await conn.execute(
        "DELETE FROM rejected_messages WHERE received_at < now() - make_interval(days => %s)", (retention_days,)
    )
    return cur.rowcount
