"""Alarms the ingest raises from what it writes: tamper, low battery, chip cloned; one open alarm per (kind, tag)."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import timedelta

import psycopg
import pytest

from backend.alarms import engine
from backend.alarms.evidence import Committed, Passages
from backend.alarms.kinds import (
    HIDDEN_FROM_POLICE,
    INSTALLER_KINDS,
    OWNER_ONLY_KINDS,
    STATION_KINDS,
    TRAIL_KINDS,
    AlarmKind,
)
from backend.ingest import writer
from backend.ingest.consumer import Ingest
from protocol import topics
from protocol.messages import Alert, format_tag, parse_batch_rows, utcnow
from tests import factories
from tests.backend.test_ingest import wait_until

LOW_BATTERY, TAMPER = 1, 2


def _write(conn: psycopg.Connection, *batches: object, max_speed_kmh: float = 60.0) -> list[int]:
    """Write batches as the ingest does: validated from their JSON, in one transaction; then have every detector
    judge what was new. The ids of the alarms raised or updated."""
    with conn.transaction():
        result = writer.write_batches(conn, [parse_batch_rows(b.to_json()) for b in batches])  # type: ignore[attr-defined]
    return engine.raise_alarms(conn, result.committed, engine.ON_COMMIT + engine.deferred(max_speed_kmh))


def _alarms(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT kind, severity, tag_id, station_id, sightings, state FROM alarms ORDER BY kind, tag_id"
    ).fetchall()


def _west_and_east(conn: psycopg.Connection, west: str = "st-west", east: str = "st-east") -> None:
    """Two stations on one street, about 9.6 km apart: too far for a bike to ride in a minute or two."""
    factories.station(conn, west, lat=30.25, lon=120.10)
    factories.station(conn, east, lat=30.25, lon=120.20)


@pytest.fixture
def conn(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def test_each_kind_has_its_stored_name_severity_and_audience(conn):
    allowed = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'alarms'::regclass"
        " AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%%kind%%'"  # the CHECK, not PostgreSQL 18's NOT NULL
    ).fetchone()[0]
    assert all(f"'{kind}'" in allowed for kind in AlarmKind)  # what the database accepts, unchanged
    assert {k: k.severity for k in AlarmKind} == {
        "stolen_chip_seen": "critical",
        "chip_cloned": "critical",
        "armed_bike_moving": "warning",
        "tamper": "warning",
        "low_battery": "info",
        "station_offline": "warning",
        "possibly_recovered": "info",
    }
    assert TRAIL_KINDS == ("stolen_chip_seen", "chip_cloned", "armed_bike_moving")
    assert STATION_KINDS == INSTALLER_KINDS == ("station_offline",)
    assert OWNER_ONLY_KINDS == HIDDEN_FROM_POLICE == ("armed_bike_moving",)


def test_tamper_and_low_battery_flags_raise_one_alarm_each_for_registered_chips_only(conn):
    factories.station(conn, "st-1")
    factories.bike(conn, 0xA1)
    factories.bike(conn, 0xA2)
    # 0xA3 is nobody's chip: its flags raise nothing.
    _write(
        conn,
        factories.batch("st-1", 1, [0xA1, 0xA3], flags=TAMPER | LOW_BATTERY),
        factories.batch("st-1", 2, [0xA2], flags=LOW_BATTERY),
    )
    assert _alarms(conn) == [
        ("low_battery", "info", 0xA1, "st-1", 1, "active"),
        ("low_battery", "info", 0xA2, "st-1", 1, "active"),
        ("tamper", "warning", 0xA1, "st-1", 1, "active"),
    ]


def test_later_flagged_sightings_update_the_open_alarm_and_a_cleared_one_is_raised_anew(conn):
    factories.station(conn, "st-1")
    factories.bike(conn, 0xB1)
    alarm_ids = _write(conn, factories.batch("st-1", 1, [0xB1], flags=TAMPER))
    _write(conn, factories.batch("st-1", 2, [0xB1], flags=TAMPER), factories.batch("st-1", 3, [0xB1], flags=TAMPER))
    _write(conn, factories.batch("st-1", 3, [0xB1], flags=TAMPER))  # redelivered: changes nothing
    _write(conn, factories.batch("st-1", 4, [0xB1], flags=0))  # no flag: no evidence
    assert _alarms(conn) == [("tamper", "warning", 0xB1, "st-1", 3, "active")]
    conn.execute("UPDATE alarms SET state = 'cleared' WHERE alarm_id = %s", (alarm_ids[0],))
    again = _write(conn, factories.batch("st-1", 5, [0xB1], flags=TAMPER))
    assert again and again != alarm_ids
    assert conn.execute("SELECT count(*) FROM alarms WHERE state <> 'cleared'").fetchone() == (1,)


def test_tamper_alert_from_a_station_raises_the_same_tamper_alarm(conn):
    factories.station(conn, "st-1")
    factories.bike(conn, 0xC1)
    at = utcnow()
    alerts = [
        Alert(station_id="st-1", kind="tamper", tag_id=format_tag(t), seen_at=at, rssi_dbm=-50, antenna=0)
        for t in (0xC1, 0xC2)
    ]
    for _ in range(2):  # redelivered: stored once, the alarm not counted twice
        with conn.transaction():
            result = writer.write_alerts(conn, alerts)
        engine.raise_alarms(conn, result.committed, engine.ON_COMMIT)
    _write(conn, factories.batch("st-1", 1, [0xC1], flags=TAMPER))
    assert _alarms(conn) == [("tamper", "warning", 0xC1, "st-1", 2, "active")]


def test_chip_at_two_far_stations_within_one_flush_is_cloned(conn):
    _west_and_east(conn)
    factories.bike(conn, 0xD1)
    factories.bike(conn, 0xD2)
    at = utcnow()
    # 0xD9 is nobody's chip: as far and as fast, it raises nothing.
    alarm_ids = _write(
        conn,
        factories.batch("st-west", 1, [0xD1, 0xD2, 0xD9], at=at),
        factories.batch("st-east", 1, [0xD1, 0xD9], at=at + timedelta(minutes=2)),
    )
    assert _alarms(conn) == [("chip_cloned", "critical", 0xD1, "st-east", 1, "active")]
    assert len(alarm_ids) == 1


def test_chip_seen_against_its_previous_sighting_too_fast_is_cloned_once(conn):
    _west_and_east(conn)
    factories.bike(conn, 0xE1)
    at = utcnow() - timedelta(minutes=6)
    _write(conn, factories.batch("st-west", 1, [0xE1], at=at))
    _write(conn, factories.batch("st-east", 1, [0xE1], at=at + timedelta(minutes=3)))  # 9.6 km in 3 min
    _write(conn, factories.batch("st-west", 2, [0xE1], at=at + timedelta(minutes=4)))  # and back in 1 min
    _write(conn, factories.batch("st-west", 3, [0xE1], at=at + timedelta(minutes=5)))  # same station: fine
    assert _alarms(conn) == [("chip_cloned", "critical", 0xE1, "st-west", 2, "active")]


def test_ride_a_bike_can_make_and_unregistered_chips_are_not_clones(conn):
    factories.station(conn, "st-a", lat=30.250, lon=120.10)
    factories.station(conn, "st-b", lat=30.259, lon=120.10)  # 1 km north
    factories.station(conn, "st-c", lat=30.26, lon=120.20)
    factories.bike(conn, 0xF1)
    at = utcnow() - timedelta(minutes=5)
    _write(conn, factories.batch("st-a", 1, [0xF1, 0xF9], at=at))
    _write(conn, factories.batch("st-b", 1, [0xF1], at=at + timedelta(minutes=2)))  # 30 km/h
    _write(conn, factories.batch("st-c", 1, [0xF9], at=at + timedelta(minutes=2)))  # too fast, but nobody's chip
    assert _alarms(conn) == []
    # The same ride is too fast for a lower limit.
    _write(conn, factories.batch("st-a", 2, [0xF1], at=at + timedelta(minutes=3)), max_speed_kmh=10)
    assert [a[0] for a in _alarms(conn)] == ["chip_cloned"]


def test_a_chip_retired_after_its_last_passage_is_no_clone_wherever_it_turns_up(conn):
    _west_and_east(conn)
    factories.bike(conn, 0xF4)
    at = utcnow() - timedelta(minutes=5)
    _write(conn, factories.batch("st-west", 1, [0xF4], at=at))
    # The bike is scrapped (as the registry retires a chip); the old chip is still on the air, far away a minute on.
    conn.execute(
        "UPDATE chips SET bike_id = NULL, retired_at = now(), retired_reason = 'bike scrapped' WHERE tag_id = %s",
        (0xF4,),
    )
    _write(conn, factories.batch("st-east", 1, [0xF4], at=at + timedelta(minutes=1)))
    assert _alarms(conn) == []


def test_tampered_chip_published_to_the_broker_raises_an_alarm(
    ingest: Ingest,
    publish,
    database_url,
    topic_prefix,
):
    station = f"{topic_prefix}-t"
    with psycopg.connect(database_url) as c:
        factories.station(c, station)
        factories.bike(c, 0x7A7A01)
    publish(topics.station_topic(station, "sightings"), factories.batch(station, 1, [0x7A7A01], flags=TAMPER).to_json())
    wait_until(lambda: ingest.counters.messages >= 1)
    with psycopg.connect(database_url) as c:
        assert _alarms(c) == [("tamper", "warning", 0x7A7A01, station, 1, "active")]


def test_a_late_batch_from_a_spool_does_not_move_the_chip_back(conn):
    _west_and_east(conn)
    factories.bike(conn, 0xF2)
    at = utcnow()
    _write(conn, factories.batch("st-west", 1, [0xF2], at=at))
    _write(conn, factories.batch("st-east", 1, [0xF2], at=at - timedelta(hours=2)))  # drained after an outage
    assert conn.execute(
        "SELECT station_id, last_seen_at FROM chip_positions WHERE tag_id = %s", (0xF2,)
    ).fetchone() == ("st-west", at)
    assert _alarms(conn) == []


def test_a_round_of_passages_in_any_order_is_judged_in_time_order_and_moves_the_chip_to_its_latest(conn):
    _west_and_east(conn)
    factories.bike(conn, 0xF3)
    at = utcnow() - timedelta(hours=2)
    _write(conn, factories.batch("st-west", 1, [0xF3], at=at))
    # One round: the latest passage first, then one from before the stored position (a spool drained late), whose
    # far station is no clone: nothing came before it, and the stored position after it is not this round's.
    _write(
        conn,
        factories.batch("st-west", 2, [0xF3], at=at + timedelta(minutes=20)),
        factories.batch("st-east", 1, [0xF3], at=at - timedelta(hours=1)),
    )
    position = "SELECT station_id, last_seen_at FROM chip_positions WHERE tag_id = %s"
    assert conn.execute(position, (0xF3,)).fetchone() == ("st-west", at + timedelta(minutes=20))
    assert _alarms(conn) == []
    # One round again, in reverse order: east a minute after the stored west (too fast), then west four minutes
    # after that (too fast again): one alarm, two sightings, and the chip is where it was seen last.
    _write(
        conn,
        factories.batch("st-west", 3, [0xF3], at=at + timedelta(minutes=25)),
        factories.batch("st-east", 2, [0xF3], at=at + timedelta(minutes=21)),
    )
    assert _alarms(conn) == [("chip_cloned", "critical", 0xF3, "st-west", 2, "active")]
    assert conn.execute(position, (0xF3,)).fetchone() == ("st-west", at + timedelta(minutes=25))


def test_a_mobile_readers_passages_are_judged_against_no_other_in_a_round_or_across_rounds(conn):
    _west_and_east(conn)
    factories.station(conn, "car-1", lat=30.25, lon=120.30)  # a patrol car's reader, last registered 9.6 km on east
    conn.execute("UPDATE stations SET mobile = true WHERE station_id = 'car-1'")
    factories.bike(conn, 0xF5)
    at = utcnow() - timedelta(minutes=30)
    # One round: west, the car a minute later, west again a minute after that. Where the car was when it heard the
    # chip is not where its registry row says, so neither of its passage's neighbours is judged against it.
    _write(
        conn,
        factories.batch("st-west", 1, [0xF5], at=at),
        factories.batch("car-1", 1, [0xF5], at=at + timedelta(minutes=1)),
        factories.batch("st-west", 2, [0xF5], at=at + timedelta(minutes=2)),
    )
    # Rounds of their own: the car last, then east a minute on (the car's stored position is not judged either).
    _write(conn, factories.batch("car-1", 2, [0xF5], at=at + timedelta(minutes=10)))
    _write(conn, factories.batch("st-east", 1, [0xF5], at=at + timedelta(minutes=11)))
    assert _alarms(conn) == []
    # The fixed stations still are, in a round or across: east to west in a minute.
    _write(conn, factories.batch("st-west", 3, [0xF5], at=at + timedelta(minutes=12)))
    assert _alarms(conn) == [("chip_cloned", "critical", 0xF5, "st-west", 1, "active")]


# Four fixed stations: two 1 km apart, one 9.6 km east, one 30 km north.
_PLACES = {"st-a": (30.250, 120.10), "st-b": (30.259, 120.10), "st-c": (30.250, 120.20), "st-d": (30.520, 120.10)}


def _too_fast(here: str, there: str, gap_s: float, max_speed_kmh: float) -> bool:
    """The rule, written out once more: further apart than 200 m plus what a bike rides in the gap."""
    (a_lat, a_lon), (b_lat, b_lon) = _PLACES[here], _PLACES[there]
    h = (
        math.sin(math.radians(a_lat - b_lat) / 2) ** 2
        + math.cos(math.radians(a_lat)) * math.cos(math.radians(b_lat)) * math.sin(math.radians(a_lon - b_lon) / 2) ** 2
    )
    return 2 * 6_371_000 * math.asin(math.sqrt(h)) > 200 + max_speed_kmh / 3.6 * max(gap_s, 0.0)


def test_rounds_of_shuffled_passages_raise_what_judging_every_consecutive_pair_in_time_order_raises(conn):
    """However a round's passages are grouped (a row a chip, its own passages judged in memory), a chip's passages
    in time order are judged pair by pair: the same clones, as often, as a plain reading of the rule finds."""
    for station, (lat, lon) in _PLACES.items():
        factories.station(conn, station, lat=lat, lon=lon)
    rng = random.Random(17)
    chips = list(range(0xAB000, 0xAB000 + 12))
    for tag in chips:
        factories.bike(conn, tag)
    start = utcnow() - timedelta(hours=3)
    # Each chip's day: passages at random stations, 20 s to 15 min apart (some too fast for the distance).
    timeline: dict[int, list[tuple[str, float, float]]] = {}
    for tag in chips:
        at, passages = 0.0, []
        for _ in range(rng.randint(3, 14)):
            at += rng.uniform(20, 900)
            passages.append((rng.choice(list(_PLACES)), at, at + rng.uniform(0, 15)))
            at = passages[-1][2]
        timeline[tag] = passages
    expected: Counter[int] = Counter()
    for tag, passages in timeline.items():
        for (there, _, left), (here, came, _) in zip(passages, passages[1:], strict=False):
            if here != there and _too_fast(here, there, came - left, 60.0):
                expected[tag] += 1
    # Rounds of half an hour, each passage in the round of the time it began, in any order within it.
    for round_start in range(0, 3 * 3600, 1800):
        rows = [
            (tag, station, first, last)
            for tag, passages in timeline.items()
            for station, first, last in passages
            if round_start <= first < round_start + 1800
        ]
        rng.shuffle(rows)
        committed = Committed(
            Passages(
                [r[0] for r in rows],
                [r[1] for r in rows],
                [start + timedelta(seconds=r[2]) for r in rows],
                [start + timedelta(seconds=r[3]) for r in rows],
                [0] * len(rows),
            )
        )
        engine.raise_alarms(conn, committed, engine.deferred(60.0))
    raised = conn.execute("SELECT tag_id, sightings FROM alarms WHERE kind = 'chip_cloned'").fetchall()
    assert sum(expected.values()) > 5  # the draw has clones worth the name
    assert dict(raised) == dict(expected)


def test_the_ingest_judges_clones_within_a_second_or_two_after_traffic_stops(
    ingest: Ingest,
    publish,
    database_url,
    topic_prefix,
):
    west, east = f"{topic_prefix}-w", f"{topic_prefix}-e"
    with psycopg.connect(database_url) as c:
        _west_and_east(c, west, east)
        factories.bike(c, 0x7A7A02)
    at = utcnow()
    publish(topics.station_topic(west, "sightings"), factories.batch(west, 1, [0x7A7A02], at=at).to_json())
    publish(
        topics.station_topic(east, "sightings"),
        factories.batch(east, 1, [0x7A7A02], at=at + timedelta(minutes=1)).to_json(),
    )
    # The check runs about once a second, also when nothing more arrives.
    wait_until(lambda: _count_cloned(database_url) == 1, timeout_s=10)
    with psycopg.connect(database_url) as c:
        assert _alarms(c) == [("chip_cloned", "critical", 0x7A7A02, east, 1, "active")]


def _count_cloned(database_url: str) -> int:
    with psycopg.connect(database_url) as c:
        return c.execute("SELECT count(*) FROM alarms WHERE kind = 'chip_cloned'").fetchone()[0]  # type: ignore[index]
