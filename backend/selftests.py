"""Commissioning self-tests as stations report them: their steps stored once, announced by NOTIFY, shown live.

The ingest stores each step and summary from `stations/{id}/selftest` (`write`, in its transaction) and, after
the commit, commissions an installed station whose run passed (`commission`). The installer page reads the
latest runs (`latest_runs`) and follows new steps as server-sent events (`live_events`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from backend import stations
from protocol.messages import SelfTestMessage, SelfTestStep, SelfTestStepStarted, SelfTestSummary

NOTIFY_CHANNEL = "bikeguard_selftests"
_STEP_FIELDS = "station_id, run_id, seq, name, title, status, message, advice, rssi_dbm, noise_floor_dbm, elapsed_s, at"
_STEP_COLUMNS = f"{_STEP_FIELDS}, received_at"
_RUN_COLUMNS = "station_id, run_id, started_at, received_at, result, finished_at, steps_total, counts"


@dataclass
class Stored:
    """What one write did: steps and summaries that were new, and the runs that passed (new or not)."""

    steps_new: int = 0
    summaries_new: int = 0
    passed: list[tuple[str, str]] = field(default_factory=list)


def _note(kind: str, station_id: str, run_id: str | None = None, seq: int | None = None) -> str:
    return orjson.dumps({"kind": kind, "station_id": station_id, "run_id": run_id, "seq": seq}).decode()


def _started_note(m: SelfTestStepStarted) -> str:
    """A step begun travels whole in its notification: it is news for the page, not a record to keep."""
    fields = {"station_id", "run_id", "seq", "name", "title", "wait_s", "at"}
    return orjson.dumps({"kind": "started", **m.model_dump(mode="json", include=fields)}).decode()


def write(conn: psycopg.Connection, messages: Iterable[SelfTestMessage]) -> Stored:
    """Store steps and summaries in the current transaction, once per (station, run, seq); NOTIFY what is new.

    A step begun (`started`) is not stored, only announced; it does record its run, so a page opened while the
    first step runs shows the run.

    A run passed when its summary says so and every one of its steps is stored and none failed; those runs are
    returned, whether this write or an earlier one completed them, so a retried flush commissions all the same.
    """
    steps: dict[tuple[str, str, int], SelfTestStep] = {}
    summaries: dict[tuple[str, str], SelfTestSummary] = {}
    started: dict[tuple[str, str], Any] = {}
    ordered = list(messages)
    for m in ordered:
        run = (m.station_id, m.run_id)
        if isinstance(m, SelfTestStepStarted):
            at = m.at
        elif isinstance(m, SelfTestStep):
            steps.setdefault((m.station_id, m.run_id, m.seq), m)
            at = m.at
        else:
            summaries.setdefault(run, m)
            at = m.started_at
        started[run] = min(started.get(run, at), at)
    stored = Stored()
    if not started:
        return stored
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO station_selftest_runs (station_id, run_id, started_at)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[])"
            " ON CONFLICT (station_id, run_id) DO UPDATE"
            " SET started_at = least(station_selftest_runs.started_at, excluded.started_at)",
            ([r[0] for r in started], [r[1] for r in started], list(started.values())),
        )
        rows = [
            (
                m.station_id,
                m.run_id,
                m.seq,
                m.name,
                m.title,
                m.status,
                m.message,
                m.advice,
                m.rssi_dbm,
                m.noise_floor_dbm,
                m.elapsed_s,
                m.at,
            )
            for _, m in sorted(steps.items())
        ]
        new_steps = cur.execute(
            f"INSERT INTO station_selftest_steps ({_STEP_FIELDS})"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::int4[], %s::text[], %s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::int2[], %s::int2[], %s::float8[], %s::timestamptz[])"
            " ON CONFLICT DO NOTHING RETURNING station_id, run_id, seq",
            [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 12,
        ).fetchall()
        new_summaries = cur.execute(
            "UPDATE station_selftest_runs r SET result = u.result, finished_at = u.finished_at,"
            " steps_total = u.steps, counts = u.counts::jsonb"
            " FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::int4[], %s::text[])"
            "  AS u(station_id, run_id, result, finished_at, steps, counts)"
            " WHERE r.station_id = u.station_id AND r.run_id = u.run_id AND r.result IS NULL"
            " RETURNING r.station_id, r.run_id",
            (
                [s.station_id for s in summaries.values()],
                [s.run_id for s in summaries.values()],
                [s.result for s in summaries.values()],
                [s.finished_at for s in summaries.values()],
                [s.steps for s in summaries.values()],
                [orjson.dumps(s.counts).decode() for s in summaries.values()],
            ),
        ).fetchall()
        stored.steps_new, stored.summaries_new = len(new_steps), len(new_summaries)
        stored.passed = [
            (r[0], r[1])
            for r in cur.execute(
                "SELECT r.station_id, r.run_id FROM station_selftest_runs r"
                " JOIN unnest(%s::text[], %s::text[]) AS t(station_id, run_id) USING (station_id, run_id)"
                " WHERE r.result = 'passed' AND r.steps_total = (SELECT count(*) FROM station_selftest_steps s"
                "  WHERE s.station_id = r.station_id AND s.run_id = r.run_id AND s.seq <= r.steps_total"
                "  AND s.status <> 'fail')",
                ([r[0] for r in started], [r[1] for r in started]),
            ).fetchall()
        ]
        # In the order the station sent them: a step's start before its result, a result before the next start.
        fresh = {tuple(row) for row in new_steps}
        notes = [
            _started_note(m) if isinstance(m, SelfTestStepStarted) else _note("step", m.station_id, m.run_id, m.seq)
            for m in ordered
            if isinstance(m, SelfTestStepStarted)
            or (
                isinstance(m, SelfTestStep)
                and (m.station_id, m.run_id, m.seq) in fresh
                and steps.get((m.station_id, m.run_id, m.seq)) is m
            )
        ] + [_note("run", *row) for row in new_summaries]
        if notes:
            cur.execute(
                "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) WITH ORDINALITY AS t(n, i) ORDER BY i",
                (NOTIFY_CHANNEL, notes),
            )
    return stored


# installed -> commissioned, as stations.change_lifecycle records a move (the row, then its history), and only from
# installed: a station in any other state stays as it is.
_COMMISSION = """
    WITH moved AS (
        UPDATE stations SET lifecycle = 'commissioned', lifecycle_changed_at = now()
        WHERE station_id = %(station_id)s AND lifecycle = 'installed'
        RETURNING station_id
    ), history AS (
        INSERT INTO station_lifecycle_history (station_id, from_state, to_state, changed_by, note)
        SELECT station_id, 'installed', 'commissioned', %(actor)s, %(note)s FROM moved
    )
    SELECT pg_notify(%(channel)s, %(event)s) FROM moved
"""


def commission(conn: psycopg.Connection, station_id: str, run_id: str) -> bool:
    """Move an installed station to commissioned for its passing run, in a transaction of its own; False (nothing
    changed) in any other state. For the ingest's writer, after the run's steps are committed."""
    with conn.transaction():
        moved = conn.execute(
            _COMMISSION,
            {
                "station_id": station_id,
                "actor": f"self-test {run_id}",
                "note": "the commissioning self-test passed",
                "channel": NOTIFY_CHANNEL,
                "event": _note("station", station_id, run_id),
            },
        ).fetchone()
    return moved is not None


async def _steps_of(conn: psycopg.AsyncConnection[Any], station_id: str, run_ids: list[str]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_STEP_COLUMNS} FROM station_selftest_steps WHERE station_id = %s AND run_id = ANY(%s)"
            " ORDER BY run_id, seq",
            (station_id, run_ids),
        )
        return await cur.fetchall()


async def latest_runs(conn: psycopg.AsyncConnection[Any], station_id: str, limit: int = 5) -> list[dict[str, Any]]:
    """A station's latest runs, newest first (by when they reached us), each with its steps in order."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT 1 FROM stations WHERE station_id = %s", (station_id,))
        if await cur.fetchone() is None:
            raise stations.StationNotFound(station_id)
        await cur.execute(
            f"SELECT {_RUN_COLUMNS} FROM station_selftest_runs WHERE station_id = %s"
            " ORDER BY received_at DESC, started_at DESC LIMIT %s",
            (station_id, limit),
        )
        runs = await cur.fetchall()
    steps = await _steps_of(conn, station_id, [r["run_id"] for r in runs])
    for run in runs:
        run["steps"] = [s for s in steps if s["run_id"] == run["run_id"]]
    return runs


async def _event(pool: AsyncConnectionPool, payload: str, station_id: str) -> bytes | None:
    """The server-sent event for one notification about this station, None for other stations'."""
    note = orjson.loads(payload)
    if note.get("station_id") != station_id:
        return None
    kind, run_id = note.get("kind"), note.get("run_id")
    async with pool.connection() as conn:
        if kind == "step":
            found = [s for s in await _steps_of(conn, station_id, [run_id]) if s["seq"] == note.get("seq")]
            data: dict[str, Any] | None = found[0] if found else None
        elif kind == "run":
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"SELECT {_RUN_COLUMNS} FROM station_selftest_runs WHERE station_id = %s AND run_id = %s",
                    (station_id, run_id),
                )
                data = await cur.fetchone()
        elif kind == "station":
            data = await stations.get_station(conn, station_id)
        elif kind == "started":
            data = note
        else:
            return None
    if data is None:
        return None
    return b"event: " + str(kind).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def live_events(
    database_url: str, pool: AsyncConnectionPool, station_id: str, keepalive_s: float = 15.0
) -> AsyncGenerator[bytes, None]:
    """Server-sent events for one viewer of one station: `ready` once listening, then `started` (a step begun),
    `step`, `run` (a summary stored) and `station` (its life cycle changed), and a keep-alive comment.

    Each viewer has a listening connection of its own: installers watching a self-test are few.
    """
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        # Only now is nothing missed: a page loads the runs so far when it sees this.
        yield b"event: ready\ndata: {}\n\n"
        while True:
            async with contextlib.aclosing(listener.notifies(timeout=keepalive_s)) as notes:
                async for note in notes:
                    event = await _event(pool, note.payload, station_id)
                    if event is not None:
                        yield event
            yield b": keep-alive\n\n"
