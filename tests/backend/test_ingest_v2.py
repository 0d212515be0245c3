"""v2 chips through the real broker and database: their beacons resolved to the chip, a clone's to an alarm."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client.registry import CollectorRegistry
from psycopg_pool import ConnectionPool

from backend.ingest import writer
from backend.ingest.v2 import V2Resolution
from backend.metrics import IngestCollector
from firmware_sim.clone import CloneAttacker
from protocol import topics
from protocol.beacon_v2 import WINDOW_S, AirBeacon, ChipKey, key_check_value, window_of
from protocol.frames import TagFlags
from protocol.messages import Alert, format_tag, parse_batch_rows, utcnow
from tests import factories
from tests.backend.test_ingest import count, wait_until


def key_bytes(seed: int) -> bytes:
    """The 16 bytes of the key fit_v2 writes for this seed (what a simulated chip needs to beacon)."""
    return random.Random(seed).randbytes(16)


def fit_v2(conn: psycopg.Connection, tag_id: int, seed: int) -> tuple[int, ChipKey]:
    """A bike carrying a v2 chip with its key kept as the counter keeps it; returns (bike id, the chip's key)."""
    key = key_bytes(seed)
    bike_id = factories.bike(conn, tag_id)
    conn.execute("UPDATE chips SET kind = 'v2' WHERE tag_id = %s", (tag_id,))
    conn.execute(
        "INSERT INTO chip_keys (tag_id, key_ciphertext, key_check) VALUES (%s, %s, %s)",
        (tag_id, factories.VAULT.encrypt_chip_key(tag_id, key), key_check_value(key)),
    )
    return bike_id, ChipKey(key)


def v2_sighting(first: AirBeacon, last: AirBeacon | None, at: datetime, beacons: int = 4) -> dict[str, Any]:
    """A v2 passage as a gateway sends it: its first and last beacons heard, no tag id."""
    heard = [first.to_bytes().hex()] + ([last.to_bytes().hex()] if last else [])
    return {
        "heard": heard,
        "first_seen_at": at.isoformat(),
        "last_seen_at": (at + timedelta(seconds=2 * (beacons - 1))).isoformat(),
        "beacons": beacons,
        "peak_rssi_dbm": -58,
        "antenna": 1,
        "flags": int(first.flags),
    }


def batch(station: str, seq: int, *sightings: dict[str, Any]) -> bytes:
    sent = utcnow().isoformat()
    return orjson.dumps({"v": 1, "station_id": station, "batch_seq": seq, "sent_at": sent, "sightings": sightings})


def now_in_window() -> datetime:
    """Now, moved back so that the next 60 s stay in one window (a test must not straddle a window change)."""
    now = utcnow().replace(microsecond=0)
    left = (window_of(now.timestamp()) + 1) * WINDOW_S - now.timestamp()
    return now - timedelta(seconds=max(0.0, 90 - left))


def test_a_v2_passage_is_stored_as_its_chips_and_a_v1_one_beside_it_as_before(
    ingest, publish, database_url, topic_prefix
):
    station = f"{topic_prefix}-v2a"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        factories.bike(conn, 0x00C1A001)  # a v1 chip
        _, key = fit_v2(conn, 0x00C2B001, 1)
    at = now_in_window()
    w = window_of(at.timestamp())
    v1 = {
        "tag_id": format_tag(0x00C1A001),
        "first_seen_at": at.isoformat(),
        "last_seen_at": at.isoformat(),
        "beacons": 1,
        "peak_rssi_dbm": -70,
        "antenna": 0,
        "flags": 0,
    }
    v2 = v2_sighting(key.seal(w, 100, TagFlags.MOTION), key.seal(w, 103, TagFlags.MOTION), at)
    publish(topics.station_topic(station, "sightings"), batch(station, 1, v1, v2))
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) >= 2)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tag_id, beacons, flags FROM sightings WHERE station_id = %s ORDER BY tag_id", (station,)
        ).fetchall()
        state = conn.execute("SELECT counter, station_id FROM chip_beacon_states WHERE tag_id = %s", (0x00C2B001,))
        assert state.fetchone() == (103, station)
    assert rows == [(0x00C1A001, 1, 0), (0x00C2B001, 4, int(TagFlags.MOTION))]
    registry = CollectorRegistry()
    registry.register(IngestCollector(ingest))
    assert registry.get_sample_value("bikeguard_ingest_v2_sightings_total", {"outcome": "resolved"}) == 1
    assert registry.get_sample_value("bikeguard_ingest_v2_beacons_total", {"verdict": "ok"}) == 2


def test_a_replayed_and_a_forged_beacon_raise_a_cloned_chip_alarm_and_are_not_the_chips_passages(
    ingest, publish, database_url, topic_prefix, staff
):
    home, elsewhere = f"{topic_prefix}-v2h", f"{topic_prefix}-v2e"
    tag = 0x00C2B002
    with psycopg.connect(database_url) as conn:
        factories.station(conn, home)
        factories.station(conn, elsewhere, lat=30.40)
        _, key = fit_v2(conn, tag, 2)
    at = now_in_window()
    w = window_of(at.timestamp())
    genuine_first, genuine_last = key.seal(w, 500, TagFlags(0)), key.seal(w, 505, TagFlags(0))
    publish(topics.station_topic(home, "sightings"), batch(home, 1, v2_sighting(genuine_first, genuine_last, at)))
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE tag_id = %s", tag) == 1)
    # A thief's radio captured the genuine first beacon and plays it back across town a minute later, then makes
    # up beacons of the chip's eid without its key.
    clone = CloneAttacker(random.Random(3))
    clone.capture(genuine_first)
    replayed = clone.replay(genuine_first.eid)
    forged = clone.forge(genuine_first.eid)
    later = at + timedelta(seconds=60)
    topic = topics.station_topic(elsewhere, "sightings")
    publish(topic, batch(elsewhere, 1, v2_sighting(replayed, replayed, later)))
    publish(topic, batch(elsewhere, 2, v2_sighting(forged, None, later + timedelta(seconds=20), beacons=1)))
    # The counters move as the flush judges, before it commits: wait for what the police see, the evidence.
    wait_until(lambda: ingest.v2.counters.sightings_cloned >= 2)
    evidence = "SELECT count(*) FROM alarm_evidence JOIN alarms USING (alarm_id) WHERE tag_id = %s"
    wait_until(lambda: count(database_url, evidence, tag) >= 3)
    with psycopg.connect(database_url) as conn:
        alarms = conn.execute("SELECT kind, tag_id, station_id FROM alarms WHERE tag_id = %s", (tag,)).fetchall()
        stored = conn.execute("SELECT station_id FROM sightings WHERE tag_id = %s", (tag,)).fetchall()
        counter = conn.execute("SELECT counter FROM chip_beacon_states WHERE tag_id = %s", (tag,)).fetchone()
    assert alarms == [("chip_cloned", tag, elsewhere)]
    assert stored == [(home,)], "neither the replay nor the forgery is a passage of the chip"
    assert counter == (505,), "the clone moved nothing forward"
    # The evidence is kept with the alarm for the police: the bike is not reported stolen, so with a case number.
    with psycopg.connect(database_url) as conn:
        [(alarm_id,)] = conn.execute("SELECT alarm_id FROM alarms WHERE tag_id = %s", (tag,)).fetchall()
    assert staff.police.get(f"/api/alarms/{alarm_id}").json()["evidence"] == [], "where the chip was is the bike's"
    opened = staff.police.get(f"/api/alarms/{alarm_id}?case_number=HZ-2026-0017").json()
    forgery, *replays = opened["evidence"]  # newest first: the forgery, then the replayed passage's two beacons
    assert [r["offending"]["payload_hex"] for r in replays] == [genuine_first.to_bytes().hex()] * 2
    replay = replays[0]
    assert (replay["verdict"], replay["offending"]["station_id"], replay["offending"]["counter"]) == (
        "replay",
        elsewhere,
        500,
    )
    assert replay["previous"]["station_id"] == home and replay["previous"]["counter"] == 505
    assert replay["offending"]["payload_hex"] == genuine_first.to_bytes().hex()
    assert (forgery["verdict"], forgery["offending"]["counter"]) == ("bad_mac", None)
    assert key.eid(w).hex() in forgery["offending"]["payload_hex"], "a forgery of the chip's eid"


def test_a_stolen_v2_chips_alert_from_the_edge_raises_the_stolen_chip_alarm_at_once(
    ingest, publish, database_url, topic_prefix
):
    station = f"{topic_prefix}-v2s"
    tag = 0x00C2B003
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        bike_id, key = fit_v2(conn, tag, 4)
        factories.theft(conn, bike_id)
    at = now_in_window()
    beacon = key.seal(window_of(at.timestamp()), 77, TagFlags.MOTION)
    alert = Alert(
        station_id=station,
        kind="hotlist_hit",
        heard=beacon.to_bytes().hex(),
        seen_at=at,
        rssi_dbm=-60,
        antenna=0,
        hotlist_version=1,
    )
    publish(topics.station_topic(station, "alerts"), alert.to_json())
    wait_until(lambda: count(database_url, "SELECT count(*) FROM alarms WHERE tag_id = %s", tag) >= 1)
    with psycopg.connect(database_url) as conn:
        alarms = conn.execute("SELECT kind, station_id FROM alarms WHERE tag_id = %s", (tag,)).fetchall()
        alerts = conn.execute("SELECT kind, tag_id FROM station_alerts WHERE station_id = %s", (station,)).fetchall()
    assert alarms == [("stolen_chip_seen", station)]
    assert alerts == [("hotlist_hit", tag)]


def test_an_unknown_eid_is_counted_and_not_stored(ingest, publish, database_url, topic_prefix):
    station = f"{topic_prefix}-v2u"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    at = now_in_window()
    stranger = ChipKey(bytes(range(16))).seal(window_of(at.timestamp()), 1, TagFlags(0))  # a chip nobody fitted
    before = ingest.v2.counters.sightings_unknown
    publish(topics.station_topic(station, "sightings"), batch(station, 1, v2_sighting(stranger, None, at, 1)))
    wait_until(lambda: ingest.v2.counters.sightings_unknown > before)
    assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 0
    assert any(payload == stranger.to_bytes() for _, _, payload in ingest.v2.unknown())


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url) as c:
        yield c


def _two_stations_and_a_chip(
    conn: psycopg.Connection, stations: tuple[str, str], tag: int, seed: int
) -> tuple[ChipKey, datetime, int]:
    """Two stations far enough apart for a replay between them to be no duplicate, and a bike with a v2 chip,
    committed; returns the chip's key, a time clear of a window change, and its window."""
    factories.station(conn, stations[0])
    factories.station(conn, stations[1], lat=30.31)
    _, key = fit_v2(conn, tag, seed)
    conn.commit()
    at = now_in_window()
    return key, at, window_of(at.timestamp())


def test_workers_share_the_chips_counters_so_a_replay_to_another_worker_is_caught(conn: psycopg.Connection) -> None:
    """Two ingest workers (two resolutions) on one database: the second compares with what the first accepted."""
    tag = 0x00C2B004
    key, at, w = _two_stations_and_a_chip(conn, ("v2-w1", "v2-w2"), tag, 5)
    genuine = key.seal(w, 900, TagFlags(0))
    first_worker, second_worker = V2Resolution(factories.VAULT), V2Resolution(factories.VAULT)
    with conn.transaction():
        rows = first_worker.resolve_sightings(
            conn, [parse_batch_rows(batch("v2-w1", 1, v2_sighting(genuine, None, at, 1)))]
        )
    assert [r["tag_id"] for r in rows[0]] == [format_tag(tag)]
    assert first_worker.states_held == 0, "the state is the database's: a worker's memory does not grow with a county"
    replay = parse_batch_rows(batch("v2-w2", 1, v2_sighting(genuine, None, at + timedelta(seconds=45), 1)))
    with conn.transaction():
        assert second_worker.resolve_sightings(conn, [replay]) == [[]]
    assert second_worker.counters.sightings_cloned == 1
    assert conn.execute("SELECT kind FROM alarms WHERE tag_id = %s", (tag,)).fetchall() == [("chip_cloned",)]


def test_a_flush_holds_its_chips_states_only_while_it_judges_them(database_url: str) -> None:
    """As the ingest runs it (a pool for the states), a flush of sightings writes its chips' states back in a
    transaction of its own: another worker's flush of the same chip goes on while the first flush's transaction is
    still open, and still catches a replay of what the first accepted. The first flush then fails; its redelivery
    stores the same passage and raises no alarm."""
    waits = "-c lock_timeout=5s"  # waiting for the other flush's commit fails the test instead of hanging it
    tag = 0x00C2D001
    with psycopg.connect(database_url) as conn:
        key, at, w = _two_stations_and_a_chip(conn, ("v2-s1", "v2-s2"), tag, 77)
    first, last, later = (key.seal(w, counter, TagFlags(0)) for counter in (1000, 1003, 1010))
    flush = batch("v2-s1", 1, v2_sighting(first, last, at))
    elsewhere = batch(
        "v2-s2",
        1,
        v2_sighting(later, None, at + timedelta(seconds=30), 1),
        v2_sighting(last, None, at + timedelta(seconds=45), 1),  # the first flush's last beacon played again
    )
    # The time's partition (a TimescaleDB chunk) exists, as after the day's first flush: a flush that makes one holds
    # it until it commits, and another flush into it waits for that whatever the chips' states do.
    v1 = {"tag_id": format_tag(0x00C2D0FF), "first_seen_at": at.isoformat(), "last_seen_at": at.isoformat()}
    v1 |= {"beacons": 1, "peak_rssi_dbm": -60, "antenna": 1, "flags": 0}
    with psycopg.connect(database_url) as conn:
        writer.write_batches(conn, [parse_batch_rows(batch("v2-s1", 99, v1))])
    with (
        ConnectionPool(database_url, min_size=1, max_size=2, kwargs={"options": waits}) as states,
        psycopg.connect(database_url, options=waits) as a,
        psycopg.connect(database_url, options=waits) as b,
    ):
        first_worker = V2Resolution(factories.VAULT, states=states)
        second_worker = V2Resolution(factories.VAULT, states=states)
        stored = writer.write_batches(a, [parse_batch_rows(flush)], first_worker.resolve_sightings)
        assert stored.sightings == 1  # and the first flush's transaction stays open
        assert writer.write_batches(b, [parse_batch_rows(elsewhere)], second_worker.resolve_sightings).sightings == 1
        b.commit()
        assert second_worker.counters.sightings_cloned == 1
        a.rollback()  # the first flush failed: its messages come again
        again = writer.write_batches(a, [parse_batch_rows(flush)], first_worker.resolve_sightings)
        a.commit()
        assert (again.sightings, first_worker.counters.sightings_cloned) == (1, 0)
        passages = a.execute(
            "SELECT station_id, first_seen_at FROM sightings WHERE tag_id = %s ORDER BY first_seen_at", (tag,)
        ).fetchall()
        assert passages == [("v2-s1", at), ("v2-s2", at + timedelta(seconds=30))]
        alarms = a.execute("SELECT kind FROM alarms WHERE tag_id = %s", (tag,)).fetchall()
        assert alarms == [("chip_cloned",)]


def test_two_workers_hearing_chips_for_the_first_time_at_once_never_deadlock(database_url: str) -> None:
    """Two workers' flushes of chips never heard before, overlapping, in concurrent transactions. A chip's state row
    exists from its fitting, so each flush locks all of its chips in tag order; rows made at a flush's write-back
    once let two workers wait for each other (PostgreSQL refuses one as a deadlock: a flush retried, an error log)."""
    tags = list(range(0x00C2C000, 0x00C2C000 + 120))
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "v2-d1")
        factories.station(conn, "v2-d2", lat=30.31)
        keys = {tag: fit_v2(conn, tag, 1000 + i)[1] for i, tag in enumerate(tags)}
        empty = conn.execute(
            "SELECT count(*) FROM chip_beacon_states WHERE tag_id = ANY(%s) AND counter IS NULL", (tags,)
        ).fetchone()
    assert empty == (len(tags),), "a fitted chip's state row is there, empty, before its first beacon"
    at = now_in_window()
    w = window_of(at.timestamp())

    def worker(station: str, seed: int) -> int:
        resolution, rng = V2Resolution(factories.VAULT), random.Random(seed)
        resolved = 0
        with psycopg.connect(database_url) as conn:
            for flush in range(30):
                chosen = rng.sample(tags, 12)
                sightings = [
                    v2_sighting(keys[t].seal(w, 10 + 2 * flush + seed, TagFlags(0)), None, at, 1) for t in chosen
                ]
                with conn.transaction():
                    [rows] = resolution.resolve_sightings(conn, [parse_batch_rows(batch(station, flush, *sightings))])
                    conn.execute("SELECT pg_sleep(0.005)")  # the rest of the flush: the locks are held till commit
                resolved += len(rows)
        return resolved

    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(worker, "v2-d1", 0), pool.submit(worker, "v2-d2", 1)]
        assert [f.result(timeout=120) for f in done] == [30 * 12, 30 * 12], "every beacon resolved, none refused"


def test_a_chip_fitted_after_the_worker_started_resolves_at_its_first_beacon(conn: psycopg.Connection) -> None:
    clock = [utcnow().timestamp()]
    resolution = V2Resolution(factories.VAULT, clock=lambda: clock[0])
    factories.station(conn, "v2-f1")
    conn.commit()
    at = now_in_window()
    w = window_of(at.timestamp())

    def sighting_of(key: ChipKey, counter: int) -> list[dict[str, Any]]:
        beacon = key.seal(w, counter, TagFlags(0))
        return [
            parse_batch_rows(batch("v2-f1", counter, v2_sighting(beacon, None, at + timedelta(seconds=counter), 1)))
        ]

    with conn.transaction():  # the worker builds its table before the chip is fitted
        assert resolution.resolve_sightings(conn, sighting_of(ChipKey(bytes(16)), 1)) == [[]]
    tag = 0x00C2B005
    _, key = fit_v2(conn, tag, 6)
    conn.commit()
    with conn.transaction():
        rows = resolution.resolve_sightings(conn, sighting_of(key, 2))
    assert [r["tag_id"] for r in rows[0]] == [format_tag(tag)], "the unknown eid made the worker look"
    assert resolution.counters.beacons["unknown"] == 1, "counted once, as what it finally was"
    # Its chip replaced: the old key stops resolving at the next look.
    conn.execute("UPDATE chips SET retired_at = now(), bike_id = NULL WHERE tag_id = %s", (tag,))
    conn.commit()
    clock[0] += 61
    with conn.transaction():
        assert resolution.resolve_sightings(conn, sighting_of(key, 4)) == [[]]
    assert resolution.chips == 0


def test_a_passage_split_by_a_window_change_is_stored_as_one(ingest, publish, database_url, topic_prefix):
    station = f"{topic_prefix}-v2j"
    tag = 0x00C2B006
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        _, key = fit_v2(conn, tag, 7)
    # The last window change at least a minute ago: the chip's eid changed while it stood at the station.
    change = (window_of(utcnow().timestamp() - 60)) * WINDOW_S
    w = window_of(change)
    before = datetime.fromtimestamp(change - 8, utcnow().tzinfo)
    after = datetime.fromtimestamp(change + 1, utcnow().tzinfo)
    old_eid = v2_sighting(key.seal(w - 1, 10, TagFlags(0)), key.seal(w - 1, 13, TagFlags(0)), before, beacons=4)
    new_eid = v2_sighting(key.seal(w, 14, TagFlags(0)), key.seal(w, 16, TagFlags(0)), after, beacons=3)
    publish(topics.station_topic(station, "sightings"), batch(station, 1, old_eid, new_eid))
    wait_until(lambda: ingest.v2.counters.sightings_resolved >= 2)
    wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) >= 1)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tag_id, first_seen_at, last_seen_at, beacons FROM sightings WHERE station_id = %s", (station,)
        ).fetchall()
    assert rows == [(tag, before, after + timedelta(seconds=4), 7)], "one passage, as the bike stood there"


def test_a_beacon_delivered_hours_late_still_resolves_with_a_table_of_its_window(conn: psycopg.Connection) -> None:
    """A station's spool after a long outage: its passages are older than the windows the ingest holds."""
    factories.station(conn, "v2-late")
    tag = 0x00C2B007
    _, key = fit_v2(conn, tag, 8)
    conn.commit()
    resolution = V2Resolution(factories.VAULT, past_windows=1)
    heard = utcnow() - timedelta(hours=3)
    beacon = key.seal(window_of(heard.timestamp()), 40, TagFlags(0))
    fresh = key.seal(window_of(utcnow().timestamp()), 900, TagFlags(0))
    with conn.transaction():
        now_rows = resolution.resolve_sightings(
            conn, [parse_batch_rows(batch("v2-late", 2, v2_sighting(fresh, None, utcnow(), 1)))]
        )
    with conn.transaction():
        late_rows = resolution.resolve_sightings(
            conn, [parse_batch_rows(batch("v2-late", 1, v2_sighting(beacon, None, heard, 1)))]
        )
    assert [r["tag_id"] for r in now_rows[0] + late_rows[0]] == [format_tag(tag)] * 2
    assert resolution.counters.late_tables == 1
    assert resolution.counters.sightings_cloned == 0, "an old counter heard long before the newest is no replay"


def test_at_a_window_change_the_table_moves_in_the_background_and_no_flush_waits_for_it(
    conn: psycopg.Connection,
) -> None:
    """Moving the table to the next window takes seconds for a million chips (a sort of their eids, and every few
    hours a key schedule per chip): the flushes and alerts of those seconds resolve with the table as it is, a
    chip whose clock runs fast into the window after included."""
    factories.station(conn, "v2-move")
    tag = 0x00C2B008
    _, key = fit_v2(conn, tag, 9)
    conn.commit()
    start = window_of(utcnow().timestamp()) - 3  # in the past, as the ingest's time window wants
    clock = [(start + 1) * WINDOW_S - 30.0]  # 30 s before the window changes
    resolution = V2Resolution(factories.VAULT, clock=lambda: clock[0])

    def resolve(window: int, counter: int) -> list[list[dict[str, Any]]]:
        heard = datetime.fromtimestamp(clock[0], UTC)
        sighting = v2_sighting(key.seal(window, counter, TagFlags(0)), None, heard, 1)
        with conn.transaction():
            return resolution.resolve_sightings(conn, [parse_batch_rows(batch("v2-move", counter, sighting))])

    assert [r["tag_id"] for r in resolve(start, 1)[0]] == [format_tag(tag)]  # the table built at `start`
    table = resolution._table
    assert table is not None and table.centre == start
    table._build_lock.acquire()  # the move under way for as long as the test holds it
    try:
        clock[0] += 14 * 60  # 13.5 min into the next window; the chip's clock 2 min fast: it beacons the one after
        with ThreadPoolExecutor(1) as pool:
            rows = pool.submit(resolve, start + 2, 2).result(timeout=10)
        assert [r["tag_id"] for r in rows[0]] == [format_tag(tag)], "resolved while the table moves"
        assert table.centre == start and resolution.counters.table_moves_background == 0
    finally:
        table._build_lock.release()
    mover = resolution._mover
    assert mover is not None
    mover.join(10)
    assert table.centre == start + 1 and resolution.counters.table_moves_background == 1
    assert resolution.counters.table_moves_in_flush == 0
    # A worker that slept through more than a window (a paused VM): the flush moves the table before resolving.
    clock[0] += 2 * WINDOW_S
    assert [r["tag_id"] for r in resolve(start + 3, 3)[0]] == [format_tag(tag)]
    assert table.centre == start + 3 and resolution.counters.table_moves_in_flush == 1
