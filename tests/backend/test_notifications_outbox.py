"""The outbox: notifications written with the alarm or registry event that causes them, once per event and channel."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from backend.alarms import engine, store
from backend.ingest import writer
from backend.notifications import outbox
from backend.registry import Registry
from backend.vault import Vault
from protocol.frames import TagFlags
from protocol.messages import parse_batch_rows
from tests import factories

MOTION = int(TagFlags.MOTION)


@pytest.fixture
def conn(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _write(conn: psycopg.Connection, *batches: Any) -> list[int]:
    """Write batches and judge them as the ingest does: alarms (and their outbox rows) in the flush's transaction."""
    with conn.transaction():
        result = writer.write_batches(conn, [parse_batch_rows(b.to_json()) for b in batches])
        return engine.raise_alarms(conn, result.committed, engine.ON_COMMIT)


def prefer(conn: psycopg.Connection, owner_id: int, *channels: str) -> None:
    """The owner chooses these channels (with an address for each)."""
    conn.execute(
        "INSERT INTO notification_preferences (owner_id, channels, email, sms_number) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (owner_id) DO UPDATE SET channels = excluded.channels",
        (owner_id, list(channels), f"owner{owner_id}@example.org", "13800000000"),
    )


def _outbox(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT owner_id, event_key, kind, channel, urgent, state FROM notifications ORDER BY notification_id"
    ).fetchall()


def test_armed_bike_moving_writes_one_notification_per_chosen_channel_once_per_alarm(conn):
    factories.station(conn, "st-1")
    factories.station(conn, "st-2")
    owner = factories.owner(conn)
    factories.bike(conn, 0xB1, owner_id=owner, armed=True)
    prefer(conn, owner, "sms", "email")
    [alarm] = _write(conn, factories.batch("st-1", 1, [0xB1], flags=MOTION))
    # More passages update the alarm; the same batch again (a QoS 1 redelivery) changes nothing: no second message.
    _write(conn, factories.batch("st-2", 1, [0xB1], flags=MOTION))
    _write(conn, factories.batch("st-1", 1, [0xB1], flags=MOTION))
    assert _outbox(conn) == [
        (owner, f"alarm:{alarm}", "armed_bike_moving", "sms", False, "pending"),
        (owner, f"alarm:{alarm}", "armed_bike_moving", "email", False, "pending"),
    ]


def test_stolen_bike_seen_is_told_once_per_station_urgently_with_plate_station_and_time_only(conn):
    factories.station(conn, "st-1")
    factories.station(conn, "st-2")
    owner = factories.owner(conn, name="Zhang San")
    bike = factories.bike(conn, 0xB2, plate_number="浙A12345", owner_id=owner)
    factories.theft(conn, bike)
    prefer(conn, owner, "sms")
    [alarm] = _write(conn, factories.batch("st-1", 1, [0xB2]))
    _write(conn, factories.batch("st-1", 2, [0xB2]))
    _write(conn, factories.batch("st-2", 1, [0xB2]))
    assert [r[1:5] for r in _outbox(conn)] == [
        (f"alarm:{alarm}:station:st-1", "stolen_chip_seen", "sms", True),
        (f"alarm:{alarm}:station:st-2", "stolen_chip_seen", "sms", True),
    ]
    facts = conn.execute("SELECT facts FROM notifications ORDER BY notification_id LIMIT 1").fetchone()[0]
    assert set(facts) == {"plate", "station_id", "station_name", "at"}
    assert facts["plate"] == "浙A12345" and facts["station_name"] == "Station st-1"
    assert "Zhang" not in str(facts)


def test_owners_who_chose_no_channel_and_other_owners_get_nothing(conn):
    factories.station(conn, "st-1")
    quiet = factories.owner(conn)
    factories.bike(conn, 0xB3, owner_id=quiet, armed=True)
    prefer(conn, quiet)  # a preferences row with no channel
    factories.bike(conn, 0xB4, armed=True)  # an owner with no preferences at all
    other = factories.owner(conn)
    prefer(conn, other, "email")
    _write(conn, factories.batch("st-1", 1, [0xB3, 0xB4], flags=MOTION))
    assert _outbox(conn) == []


def test_a_rolled_back_flush_leaves_no_notification(conn):
    factories.station(conn, "st-1")
    owner = factories.owner(conn)
    factories.bike(conn, 0xB5, owner_id=owner, armed=True)
    prefer(conn, owner, "email")
    with pytest.raises(RuntimeError), conn.transaction():
        result = writer.write_batches(
            conn, [parse_batch_rows(factories.batch("st-1", 1, [0xB5], flags=MOTION).to_json())]
        )
        assert engine.raise_alarms(conn, result.committed, engine.ON_COMMIT)
        assert len(_outbox(conn)) == 1
        raise RuntimeError("the flush fails after judging")
    assert _outbox(conn) == [] and conn.execute("SELECT count(*) FROM alarms").fetchone() == (0,)


def test_clearing_recovery_and_transfer_consent_are_told_in_their_own_transactions(conn, database_url):
    factories.station(conn, "st-1")
    owner = factories.owner(conn)
    bike = factories.bike(conn, 0xB6, owner_id=owner)
    factories.theft(conn, bike)
    prefer(conn, owner, "email")
    [alarm] = _write(conn, factories.batch("st-1", 1, [0xB6]))
    armed_owner = factories.owner(conn)
    factories.bike(conn, 0xB7, owner_id=armed_owner, armed=True)
    prefer(conn, armed_owner, "webpush")
    [moving] = _write(conn, factories.batch("st-1", 2, [0xB7], flags=MOTION))
    registry = Registry(factories.settings(database_url), Vault("k" * 32, "l" * 32))

    async def act() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as aconn:
            await store.transition(aconn, moving, "clear", "police1")
            await registry.mark_recovered(aconn, "clerk1", bike)
            await registry.consent_to_transfer(aconn, owner, bike)

    asyncio.run(act())
    rows = _outbox(conn)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (owner, "stolen_chip_seen", "email"),
        (armed_owner, "armed_bike_moving", "webpush"),
        (armed_owner, "alarm_cleared", "webpush"),
        (owner, "bike_recovered", "email"),  # its stolen alarm is cleared with it, but told once, as the recovery
        (owner, "transfer_requested", "email"),
    ]
    assert rows[2][1] == f"alarm:{moving}:cleared" and alarm


def test_senders_are_woken_when_rows_are_written_and_not_by_updates_that_tell_nobody(conn, database_url):
    factories.station(conn, "st-1")
    owner = factories.owner(conn)
    factories.bike(conn, 0xB8, owner_id=owner, armed=True)
    factories.bike(conn, 0xB9, armed=True)  # its owner chose nothing
    prefer(conn, owner, "sms")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {outbox.NOTIFY_CHANNEL}")

        def woken() -> int:
            return len(list(listener.notifies(timeout=0.5)))

        _write(conn, factories.batch("st-1", 1, [0xB8, 0xB9], flags=MOTION))
        assert woken() == 1  # one wake-up for the flush, however many rows it wrote
        _write(conn, factories.batch("st-1", 2, [0xB8, 0xB9], flags=MOTION))  # the same alarms, updated
        assert woken() == 0
