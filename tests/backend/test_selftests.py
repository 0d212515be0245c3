"""Self-test steps through a real broker into PostgreSQL: stored once, a passing run commissions an installed
station, a failing one changes nothing; the API lists runs and follows them live."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Literal

import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from backend import selftests
from backend.ingest.consumer import Ingest
from gateway.selftest import STEPS
from gateway.selftest.publisher import started_message
from protocol import topics
from protocol.messages import SelfTestMessage, SelfTestStep, SelfTestStepStarted, SelfTestSummary, utcnow
from tests import factories
from tests.backend.conftest import Staff
from tests.backend.test_ingest import count, wait_until

Publish = Callable[[str, bytes], None]


Status = Literal["pass", "warn", "fail", "skip"]


def run_messages(
    station_id: str, statuses: list[Status] | None = None, run_id: str | None = None
) -> list[SelfTestStep | SelfTestSummary]:
    """One self-test run as a gateway publishes it: a step per entry of statuses (all pass by default), then the
    summary (passed when none failed)."""
    statuses = statuses or [*["pass"] * 7, "skip"]  # type: ignore[list-item]
    run_id = run_id or secrets.token_hex(8)
    started = utcnow()
    names = list(STEPS)
    messages: list[SelfTestStep | SelfTestSummary] = [
        SelfTestStep(
            station_id=station_id,
            run_id=run_id,
            seq=i + 1,
            name=names[i],
            title=STEPS[names[i]],
            status=status,
            message=f"{names[i]}: {status}",
            advice="check the antenna cable" if status == "fail" else "",
            noise_floor_dbm=-97 if names[i] == "noise" else None,
            rssi_dbm=-58 if names[i] == "test_tag" else None,
            at=started + timedelta(seconds=i + 1),
        )
        for i, status in enumerate(statuses)
    ]
    counts: dict[Status, int] = {s: statuses.count(s) for s in set(statuses)}
    messages.append(
        SelfTestSummary(
            station_id=station_id,
            run_id=run_id,
            seq=len(statuses) + 1,
            result="failed" if "fail" in statuses else "passed",
            steps=len(statuses),
            counts=counts,
            started_at=started,
            finished_at=started + timedelta(seconds=len(statuses) + 1),
        )
    )
    return messages


def send(publish: Publish, messages: list[SelfTestStep | SelfTestSummary]) -> None:
    for m in messages:
        publish(topics.station_topic(m.station_id, topics.SELFTEST), m.to_json())


def station(database_url: str, station_id: str, lifecycle: str) -> str:
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station_id)
        conn.execute("UPDATE stations SET lifecycle = %s WHERE station_id = %s", (lifecycle, station_id))
    return station_id


def finished(database_url: str, run_id: str) -> bool:
    """The run's summary is stored (the ingest keeps one station's messages in order: so is all before it)."""
    return (
        count(
            database_url, "SELECT count(*) FROM station_selftest_runs WHERE run_id = %s AND result IS NOT NULL", run_id
        )
        == 1
    )


def lifecycle_of(database_url: str, station_id: str) -> tuple[str, list[tuple[str, str, str | None]]]:
    with psycopg.connect(database_url) as conn:
        (state,) = conn.execute("SELECT lifecycle FROM stations WHERE station_id = %s", (station_id,)).fetchone()  # type: ignore[misc]
        history = conn.execute(
            "SELECT to_state, changed_by, note FROM station_lifecycle_history"
            " WHERE station_id = %s ORDER BY history_id",
            (station_id,),
        ).fetchall()
    return state, history


def test_steps_are_stored_once_even_when_redelivered(
    ingest: Ingest,
    publish: Publish,
    database_url: str,
    topic_prefix: str,
) -> None:
    sid = station(database_url, f"{topic_prefix}-a", "planned")
    messages = run_messages(sid)
    send(publish, messages[:3])
    send(publish, messages[:3])  # what QoS 1 redelivery looks like
    send(publish, messages[3:])
    wait_until(lambda: finished(database_url, messages[0].run_id))
    assert count(database_url, "SELECT count(*) FROM station_selftest_steps WHERE station_id = %s", sid) == 8
    assert ingest.counters.selftest_steps == 8
    with psycopg.connect(database_url) as conn:
        run = conn.execute(
            "SELECT run_id, result, steps_total, counts FROM station_selftest_runs WHERE station_id = %s", (sid,)
        ).fetchall()
        noise = conn.execute(
            "SELECT noise_floor_dbm, status FROM station_selftest_steps WHERE station_id = %s AND name = 'noise'",
            (sid,),
        ).fetchone()
    assert run == [(messages[0].run_id, "passed", 8, {"pass": 7, "skip": 1})]
    assert noise == (-97, "pass")
    # A planned station is not commissioned by a passing self-test: it must be installed first.
    assert lifecycle_of(database_url, sid)[0] == "planned"


def test_passing_run_commissions_an_installed_station(
    ingest: Ingest,
    publish: Publish,
    database_url: str,
    topic_prefix: str,
) -> None:
    sid = station(database_url, f"{topic_prefix}-b", "installed")
    messages = run_messages(sid)
    send(publish, messages)
    wait_until(lambda: lifecycle_of(database_url, sid)[0] == "commissioned")
    state, history = lifecycle_of(database_url, sid)
    assert history[-1] == ("commissioned", f"self-test {messages[0].run_id}", "the commissioning self-test passed")
    assert ingest.counters.stations_commissioned == 1
    send(publish, messages[-1:])  # the summary again: the station is commissioned once
    later = run_messages(sid)
    send(publish, later)
    wait_until(lambda: finished(database_url, later[0].run_id))
    assert len(lifecycle_of(database_url, sid)[1]) == len(history)


def test_failing_run_leaves_the_station_installed(
    ingest: Ingest,
    publish: Publish,
    database_url: str,
    topic_prefix: str,
) -> None:
    sid = station(database_url, f"{topic_prefix}-c", "installed")
    failing = run_messages(sid, ["pass", "pass", "fail", "pass", "pass", "pass", "pass", "skip"])
    send(publish, failing)
    wait_until(lambda: finished(database_url, failing[0].run_id))
    # A summary claiming a pass over a failed step is not believed either.
    lying = run_messages(sid, ["pass", "fail", "pass"])
    lying[-1] = lying[-1].model_copy(update={"result": "passed"})
    send(publish, lying)
    wait_until(lambda: finished(database_url, lying[0].run_id))
    assert lifecycle_of(database_url, sid)[0] == "installed"
    assert ingest.counters.stations_commissioned == 0


def test_unknown_station_and_invalid_payloads_are_kept_in_rejected_messages(
    ingest: Ingest,
    publish: Publish,
    database_url: str,
    topic_prefix: str,
) -> None:
    known, unknown = station(database_url, f"{topic_prefix}-k", "installed"), f"{topic_prefix}-u"
    send(publish, run_messages(unknown)[:1])
    topic = topics.station_topic(known, topics.SELFTEST)
    publish(topic, b'{"v":1,"kind":"step","station_id":"' + known.encode() + b'"}')
    publish(topic, run_messages(f"{topic_prefix}-x")[0].to_json())  # claims another station

    def rejected() -> list[str]:
        # Only this test's: a session's broker may hold retained statuses of other tests' stations.
        with psycopg.connect(database_url) as conn:
            return sorted(
                r[0]
                for r in conn.execute(
                    "SELECT reason FROM rejected_messages WHERE topic LIKE %s", (f"%/{topic_prefix}-_/selftest",)
                )
            )

    wait_until(lambda: len(rejected()) >= 3)
    rejects = rejected()
    assert len(rejects) == 3
    assert rejects[0].startswith("station_id ") and "does not match topic station" in rejects[0]
    assert rejects[1].startswith("step.run_id: Field required")
    assert rejects[2] == f"unknown station {unknown}"
    assert count(database_url, "SELECT count(*) FROM station_selftest_steps") == 0


def _commission(database_url: str, station_id: str, run_id: str) -> bool:
    with psycopg.connect(database_url) as conn:
        return selftests.commission(conn, station_id, run_id)


def _store(database_url: str, messages: list[SelfTestMessage]) -> selftests.Stored:
    with psycopg.connect(database_url) as conn, conn.transaction():
        return selftests.write(conn, messages)


def test_api_lists_the_latest_runs_with_their_steps_for_installers_only(staff: Staff, database_url: str) -> None:
    sid = station(database_url, "st-api", "installed")
    first = run_messages(sid, ["pass", "fail", "skip"])
    second = run_messages(sid)
    _store(database_url, first)
    stored = _store(database_url, second[:4])
    assert (stored.steps_new, stored.summaries_new, stored.passed) == (4, 0, [])

    r = staff.installer.get(f"/api/stations/{sid}/selftests")
    assert r.status_code == 200, r.text
    latest, earlier = r.json()
    assert (latest["run_id"], latest["result"], [s["seq"] for s in latest["steps"]]) == (
        second[0].run_id,
        None,
        [1, 2, 3, 4],
    )
    assert latest["steps"][2]["noise_floor_dbm"] == -97 and latest["steps"][3]["rssi_dbm"] == -58
    assert (earlier["result"], earlier["counts"]) == ("failed", {"pass": 1, "fail": 1, "skip": 1})
    assert earlier["steps"][1] | {"at": None, "received_at": None} == {
        "seq": 2,
        "name": "module",
        "title": "radio module answers",
        "status": "fail",
        "message": "module: fail",
        "advice": "check the antenna cable",
        "rssi_dbm": None,
        "noise_floor_dbm": None,
        "elapsed_s": 0.0,
        "at": None,
        "received_at": None,
    }
    assert staff.admin.get(f"/api/stations/{sid}/selftests?limit=1").json()[0]["run_id"] == second[0].run_id
    assert staff.police.get(f"/api/stations/{sid}/selftests").status_code == 403
    assert staff.installer.get("/api/stations/st-nowhere/selftests").status_code == 404
    assert staff.installer.get("/api/stations/st-nowhere/selftests/live").status_code == 404
    assert staff.police.get(f"/api/stations/{sid}/selftests/live").status_code == 403


@pytest.mark.anyio
async def test_live_events_follow_one_stations_steps_summary_and_commissioning(database_url: str) -> None:
    sid, other = station(database_url, "st-live", "installed"), station(database_url, "st-other", "installed")
    messages = run_messages(sid)
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        events = selftests.live_events(database_url, pool, sid, keepalive_s=0.2)
        assert await anext(events) == b"event: ready\ndata: {}\n\n"
        await asyncio.to_thread(_store, database_url, run_messages(other)[:2])
        stored = await asyncio.to_thread(_store, database_url, messages)
        assert stored.passed == [(sid, messages[0].run_id)]
        assert await asyncio.to_thread(_commission, database_url, sid, messages[0].run_id)

        seen: list[tuple[str, dict[str, object]]] = []
        while len(seen) < 10:
            chunk = await asyncio.wait_for(anext(events), 5)
            if chunk.startswith(b":"):
                continue  # keep-alive
            head, data = chunk.decode().split("\n")[:2]
            seen.append((head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
        await events.aclose()
    assert [kind for kind, _ in seen] == ["step"] * 8 + ["run", "station"]
    assert [d["seq"] for _, d in seen[:8]] == list(range(1, 9))
    assert all(d["station_id"] == sid for _, d in seen)
    assert seen[8][1]["result"] == "passed"
    assert seen[9][1]["lifecycle"] == "commissioned"


@pytest.mark.anyio
async def test_a_step_begun_is_announced_in_order_and_records_its_run_but_is_not_stored(database_url: str) -> None:
    sid = station(database_url, "st-begun", "installed")
    first = run_messages(sid)[0]
    assert isinstance(first, SelfTestStep)

    def begun(seq: int, name: str) -> SelfTestStepStarted:
        return started_message(sid, first.run_id, seq, name, first.at)

    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        events = selftests.live_events(database_url, pool, sid, keepalive_s=0.2)
        assert await anext(events) == b"event: ready\ndata: {}\n\n"
        await asyncio.to_thread(_store, database_url, [begun(1, "serial")])  # before any result: the run is there
        await asyncio.to_thread(_store, database_url, [first, begun(2, "module")])
        seen: list[tuple[str, dict[str, object]]] = []
        while len(seen) < 3:
            chunk = await asyncio.wait_for(anext(events), 5)
            if chunk.startswith(b":"):
                continue
            head, data = chunk.decode().split("\n")[:2]
            seen.append((head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
        await events.aclose()
    assert [(kind, d["seq"]) for kind, d in seen] == [("started", 1), ("step", 1), ("started", 2)]
    assert seen[2][1]["name"] == "module" and seen[0][1]["title"] == "serial port opens"
    assert count(database_url, f"SELECT count(*) FROM station_selftest_runs WHERE station_id = '{sid}'") == 1
    assert count(database_url, f"SELECT count(*) FROM station_selftest_steps WHERE station_id = '{sid}'") == 1
