"""Missing batch_seqs: the ingest notices a gap once it outlasts the grace period, asks the station for it, and closes
it as recovered when the batch comes or as lost when the station says it no longer holds it; a batch that is only
late closes its gap without a word. Through a real broker and PostgreSQL; the station's side is played by a client."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import psycopg
import pytest
from prometheus_client import generate_latest
from psycopg_pool import ConnectionPool

from backend.ingest.consumer import Ingest
from backend.ingest.gaps import LOCK_ID, GapWatch, subtract
from backend.ingest.workers import IngestWorkers
from backend.metrics import registry_for
from bikeguard.services import Broker, start_broker
from protocol import topics
from protocol.messages import BatchesGone, BatchRequest, GoneRange, utcnow
from tests import factories
from tests.backend.test_health import _samples
from tests.backend.test_provisioning import provisioned_mosquitto, require_mosquitto

GRACE_S = 1.0


def wait_until(check: Callable[[], object], timeout_s: float = 15.0, what: str = "condition") -> None:
    """Wait for check() to hold (a generous deadline, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def one(database_url: str, sql: str, *args: object) -> object:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def open_gaps(database_url: str, station: str) -> list[tuple[int, int, int]]:
    """(first_seq, last_seq, requests) of the station's open gaps."""
    with psycopg.connect(database_url) as conn:
        return [
            (r[0], r[1], r[2])
            for r in conn.execute(
                "SELECT first_seq, last_seq, requests FROM batch_gaps WHERE station_id = %s AND state = 'open'"
                " ORDER BY first_seq",
                (station,),
            )
        ]


class Requests:
    """The batch requests the backend sends to the test's stations, as their gateways receive them."""

    def __init__(self) -> None:
        self.received: list[BatchRequest] = []
        self.subscribed = threading.Event()
        self._lock = threading.Lock()

    def of(self, station_id: str) -> list[list[tuple[int, int]]]:
        """The ranges of each request to one station, in arrival order."""
        with self._lock:
            return [[(r.first, r.last) for r in m.ranges] for m in self.received if m.station_id == station_id]


@pytest.fixture
def requests(broker: Broker, topic_prefix: str) -> Iterator[Requests]:
    """Subscribe, as the test's stations would, to their requests topics."""
    with listening(broker, topic_prefix) as seen:
        yield seen


@contextlib.contextmanager
def listening(broker: Broker, topic_prefix: str) -> Iterator[Requests]:
    """The requests to the stations named `<topic_prefix>-…`, as they arrive."""
    seen = Requests()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"requested-{topic_prefix}")

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(f"{topics.ROOT}/stations/{topic_prefix}-"):
            with seen._lock:
                seen.received.append(BatchRequest.parse(bytes(msg.payload)))

    client.on_message = on_message
    client.on_subscribe = lambda *_: seen.subscribed.set()
    client.username_pw_set(broker.username, broker.password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(f"{topics.ROOT}/stations/+/{topics.REQUESTS}", qos=1)
    assert seen.subscribed.wait(10)
    try:
        yield seen
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def gap_ingest(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[Ingest]:
    """An ingest worker with a short grace period and a gap check five times a second."""
    worker = Ingest(
        factories.settings(
            database_url,
            mqtt_url=broker.url,
            mqtt_client_id=f"gaps-{topic_prefix}",
            mqtt_shared_group=f"gaps-{topic_prefix}" if broker.supports_shared_subscriptions else None,
            ingest_gap_grace_s=GRACE_S,
            ingest_gap_check_s=0.2,
            ingest_gap_request_max_s=2.0,
        )
    )
    worker.start()
    yield worker
    worker.stop()


def send_batches(publish: Callable[[str, bytes], None], station: str, *seqs: int) -> None:
    for seq in seqs:
        publish(topics.station_topic(station, "sightings"), factories.batch(station, seq, [seq % 2**31 + 1]).to_json())


def test_a_missing_batch_is_asked_for_after_the_grace_and_recovered_when_it_comes(
    gap_ingest, publish, database_url, topic_prefix, requests, caplog
):
    caplog.set_level(logging.INFO, logger="backend.ingest.gaps")
    station = f"{topic_prefix}-a"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    send_batches(publish, station, 0, 1, 4)
    noticed = time.monotonic()
    wait_until(lambda: requests.of(station), what="a request")
    assert time.monotonic() - noticed >= GRACE_S * 0.9  # not before the grace period
    assert requests.of(station)[0] == [(2, 3)]
    [(first, last, asked)] = open_gaps(database_url, station)
    assert (first, last) == (2, 3) and asked >= 1
    # Still open: asked for again, the wait doubling.
    wait_until(lambda: len(requests.of(station)) >= 2, what="a second request")
    assert gap_ingest.gaps.counters.gaps_seen == 1  # seen once, however often asked for
    assert gap_ingest.gaps.counters.gaps_by_station[station] == 1
    [seen] = [r for r in caplog.records if r.levelno == logging.WARNING and station in r.getMessage()]
    assert f"station {station}: batches 2-3 missing for " in seen.getMessage()

    send_batches(publish, station, 3)  # the station sends one of them again
    wait_until(lambda: open_gaps(database_url, station) == [(2, 2, open_gaps(database_url, station)[0][2])])
    send_batches(publish, station, 2)
    wait_until(lambda: open_gaps(database_url, station) == [], what="the gap closed")
    wait_until(lambda: gap_ingest.gaps.counters.recovered_by_station[station] == 2)
    assert one(database_url, "SELECT batches_recovered FROM batch_seq_marks WHERE station_id = %s", station) == 2
    assert one(database_url, "SELECT checked_through FROM batch_seq_marks WHERE station_id = %s", station) == 4
    assert gap_ingest.gaps.counters.batches_lost == 0
    wait_until(lambda: gap_ingest.gaps.missing_now.get(station) is None, what="nothing missing now")
    assert f"station {station}: 1 of its missing batches came once asked for" in caplog.text


def test_a_batch_only_late_closes_its_gap_without_being_asked_for_or_counted(
    gap_ingest, publish, database_url, topic_prefix, requests
):
    station = f"{topic_prefix}-b"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    send_batches(publish, station, 0, 2)
    wait_until(lambda: open_gaps(database_url, station) == [(1, 1, 0)], what="the gap noticed")
    send_batches(publish, station, 1)  # within the grace period: out of order, not missing
    wait_until(lambda: open_gaps(database_url, station) == [], what="the gap closed")
    time.sleep(GRACE_S * 1.5)  # past when it would have been asked for
    assert requests.of(station) == []
    c = gap_ingest.gaps.counters
    assert (c.gaps_seen, c.recovered_by_station[station], c.lost_by_station[station]) == (0, 0, 0)
    assert one(database_url, "SELECT batches_recovered FROM batch_seq_marks WHERE station_id = %s", station) == 0


def test_batches_the_station_no_longer_holds_are_closed_as_lost_counted_and_shown(
    gap_ingest, publish, database_url, topic_prefix, requests, staff, caplog
):
    station = f"{topic_prefix}-c"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    send_batches(publish, station, 0, 7)
    wait_until(lambda: requests.of(station), what="a request")
    assert requests.of(station)[0] == [(1, 6)]
    shown = {h["station_id"]: h for h in staff.installer.get("/api/stations/health").json()}[station]
    assert shown["batches_missing"] == 6 and shown["missing_since"] is not None
    assert any("6 batches missing since" in r for r in shown["reasons"])

    send_batches(publish, station, 5)  # one is still in the station's spool: it comes
    wait_until(lambda: one(database_url, "SELECT count(*) FROM ingested_batches WHERE station_id = %s", station) == 3)
    # ... and the station says what it no longer has: 1-2 dropped for room, 3-6 never held (5 came all the same).
    answer = BatchesGone(
        station_id=station,
        ranges=[GoneRange(first=1, last=2, reason="dropped"), GoneRange(first=3, last=6, reason="not_held")],
        next_batch_seq=8,
        sent_at=utcnow(),
    )
    publish(topics.station_topic(station, topics.GONE), answer.to_json())
    wait_until(lambda: gap_ingest.gaps.counters.lost_by_station[station] == 5, what="5 batches lost")
    assert gap_ingest.gaps.counters.lost_by_reason == {"dropped": 2, "not_held": 3}
    assert f"station {station}: batches 1-2 lost: its gateway dropped them, its spool was full" in caplog.text
    wait_until(lambda: open_gaps(database_url, station) == [], what="no gap left open")
    with psycopg.connect(database_url) as conn:
        lost = conn.execute(
            "SELECT first_seq, last_seq, reason FROM batch_gaps WHERE station_id = %s AND state = 'lost'"
            " ORDER BY first_seq",
            (station,),
        ).fetchall()
    assert lost == [(1, 2, "dropped"), (3, 4, "not_held"), (6, 6, "not_held")]

    shown = {h["station_id"]: h for h in staff.installer.get("/api/stations/health").json()}[station]
    assert (shown["batches_missing"], shown["batches_recovered"], shown["batches_lost"]) == (0, 1, 5)
    assert shown["last_lost_at"] is not None
    page = staff.installer.get("/installer").text
    assert "0 / 1 / 5" in page
    samples = _samples(generate_latest(registry_for(gap_ingest)).decode())
    assert samples[("bikeguard_ingest_station_batches_lost_total", (("station", station),))] == 5
    assert samples[("bikeguard_ingest_station_gaps_seen_total", (("station", station),))] == 1
    assert samples[("bikeguard_ingest_batches_lost_total", (("reason", "dropped"),))] == 2
    assert samples[("bikeguard_ingest_gaps_seen_total", ())] == 1


def test_an_answer_that_arrives_while_a_gap_round_cuts_the_gap_is_closed_against_the_gaps_it_leaves(
    gap_ingest, publish, database_url, topic_prefix, requests
):
    """A gap round that cuts a stored batch out of a gap replaces the gap by its parts; a station's answer flushed
    beside it once locked the gap the round deleted, skipped it, and was lost (a CI failure of the test above)."""
    station = f"{topic_prefix}-r"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    send_batches(publish, station, 0, 7)
    wait_until(lambda: requests.of(station), what="a request")
    with psycopg.connect(database_url) as round_conn, round_conn.transaction():
        # A round in progress: it holds the round lock (the worker's own rounds skip meanwhile) ...
        round_conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        send_batches(publish, station, 5)
        stored = "SELECT count(*) FROM ingested_batches WHERE station_id = %s"
        wait_until(lambda: one(database_url, stored, station) == 3, what="batch 5 stored")
        # ... and cuts batch 5 out of the gap 1-6, as every round does, not committed yet.
        assert gap_ingest.gaps._checked(round_conn, utcnow()) is not None
        answer = BatchesGone(
            station_id=station,
            ranges=[GoneRange(first=1, last=6, reason="not_held")],
            next_batch_seq=8,
            sent_at=utcnow(),
        )
        publish(topics.station_topic(station, topics.GONE), answer.to_json())
        time.sleep(1.0)  # the answer's flush waits for the round
        assert gap_ingest.gaps.counters.lost_by_station[station] == 0
    wait_until(lambda: gap_ingest.gaps.counters.lost_by_station[station] == 5, what="5 batches lost")
    with psycopg.connect(database_url) as conn:
        lost = conn.execute(
            "SELECT first_seq, last_seq FROM batch_gaps WHERE station_id = %s AND state = 'lost' ORDER BY first_seq",
            (station,),
        ).fetchall()
    assert lost == [(1, 4), (6, 6)]
    assert open_gaps(database_url, station) == []


def test_an_answer_closes_only_gaps_that_were_asked_for_and_a_malformed_one_is_refused_and_kept(
    gap_ingest, publish, database_url, topic_prefix
):
    station = f"{topic_prefix}-d"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    gone = topics.station_topic(station, topics.GONE)
    publish(gone, b'{"v": 1, "station_id": "' + station.encode() + b'", "ranges": [{"first": 5, "last": 2}]}')
    publish(gone, b"\xff not json")
    wait_until(lambda: gap_ingest.counters.rejected["invalid"] >= 2, what="two refusals")
    assert one(database_url, "SELECT count(*) FROM rejected_messages WHERE topic = %s AND kind = 'invalid'", gone) == 2

    # The worker goes on: a gap, and an answer before anything was asked for, which closes nothing.
    send_batches(publish, station, 0, 3)
    wait_until(lambda: open_gaps(database_url, station) == [(1, 2, 0)], what="the gap noticed")
    early = BatchesGone(
        station_id=station, ranges=[GoneRange(first=1, last=2, reason="dropped")], next_batch_seq=4, sent_at=utcnow()
    )
    publish(gone, early.to_json())
    wait_until(lambda: gap_ingest.counters.messages >= 5, what="the answer taken")
    assert gap_ingest.gaps.counters.batches_lost == 0
    assert one(database_url, "SELECT count(*) FROM batch_gaps WHERE station_id = %s AND state = 'lost'", station) == 0


def test_subtract_cuts_holes_out_of_a_range():
    assert subtract((1, 10), []) == [(1, 10)]
    assert subtract((1, 10), [(1, 1), (5, 6), (10, 12)]) == [(2, 4), (7, 9)]
    assert subtract((3, 4), [(0, 9)]) == []
    assert subtract((3, 8), [(0, 1), (4, 4), (20, 30)]) == [(3, 3), (5, 8)]


def test_a_replaced_spool_jumps_ahead_and_the_seqs_it_never_issued_close_as_a_loss_of_unknown_size(
    gap_ingest, publish, database_url, topic_prefix, requests, staff
):
    station = f"{topic_prefix}-e"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    old, new = 1_764_000_000_000, 1_764_086_400_000  # spools start at the clock in milliseconds, a day apart
    send_batches(publish, station, old, old + 1)
    wait_until(lambda: one(database_url, "SELECT count(*) FROM batch_seq_marks WHERE station_id = %s", station) == 1)
    assert open_gaps(database_url, station) == []  # nothing is missing before a station's first batch
    send_batches(publish, station, new)
    wait_until(lambda: requests.of(station), what="a request")
    assert requests.of(station)[0] == [(old + 2, new - 1)]
    answer = BatchesGone(
        station_id=station,
        ranges=[GoneRange(first=old + 2, last=new - 1, reason="not_issued")],
        next_batch_seq=new + 1,
        sent_at=utcnow(),
    )
    publish(topics.station_topic(station, topics.GONE), answer.to_json())
    wait_until(lambda: gap_ingest.gaps.counters.not_issued_by_station[station] == 1, what="the gap closed")
    assert gap_ingest.gaps.counters.batches_lost == 0  # not 86 million: how many the old spool held is unknown
    shown = {h["station_id"]: h for h in staff.installer.get("/api/stations/health").json()}[station]
    assert (shown["batches_missing"], shown["batches_lost"], shown["gaps_not_issued"]) == (0, 0, 1)
    assert "spool replaced 1×" in staff.installer.get("/installer").text


@pytest.mark.mosquitto
def test_with_generated_acl_only_the_backend_asks_for_batches_and_only_a_station_answers_for_itself(tmp_path):
    require_mosquitto()
    broker, passwords = provisioned_mosquitto(tmp_path, ["st-a", "st-b"])
    clients: list[mqtt.Client] = []

    def connect(user: str, subscriptions: list[str]) -> tuple[mqtt.Client, list[str]]:
        heard: list[str] = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-gaps")
        client.username_pw_set(user, passwords[user])
        subscribed = threading.Event()
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = lambda _c, _u, m: heard.append(f"{m.topic} {m.payload.decode()}")
        client.connect(broker.host, broker.port)
        client.loop_start()
        clients.append(client)
        if subscriptions:
            client.subscribe([(s, 1) for s in subscriptions])
            assert subscribed.wait(10)
        return client, heard

    try:
        # Each station listens to its own requests and (refused by the ACL, never delivered) the other's.
        both = [topics.requests_topic("st-a"), topics.requests_topic("st-b")]
        st_a, heard_a = connect("st-a", both)
        st_b, heard_b = connect("st-b", both)
        backend, heard_backend = connect("bikeguard-backend", [topics.station_filter(topics.GONE)])

        # A station forging a request to another, or an answer for another, is refused.
        st_b.publish(topics.requests_topic("st-a"), b"forged request", qos=1).wait_for_publish(5)
        st_b.publish(topics.station_topic("st-a", topics.GONE), b"forged answer", qos=1).wait_for_publish(5)
        backend.publish(topics.requests_topic("st-a"), b"request a", qos=1).wait_for_publish(5)
        backend.publish(topics.requests_topic("st-b"), b"request b", qos=1).wait_for_publish(5)
        st_a.publish(topics.station_topic("st-a", topics.GONE), b"answer a", qos=1).wait_for_publish(5)

        wait_until(lambda: heard_a and heard_b and heard_backend, what="the allowed messages")
        time.sleep(0.3)  # what else would have come with them
        assert heard_a == [f"{topics.requests_topic('st-a')} request a"]
        assert heard_b == [f"{topics.requests_topic('st-b')} request b"]
        assert heard_backend == [f"{topics.station_topic('st-a', topics.GONE)} answer a"]
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.stop()


def test_one_gap_check_runs_at_a_time_however_many_workers_and_each_gap_is_recorded_once(database_url):
    station = "st-lock"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        conn.execute(
            "INSERT INTO ingested_batches (station_id, batch_seq, sent_at, sightings)"
            " SELECT %s, s, now(), 1 FROM unnest(ARRAY[0, 3, 4, 9]) AS s",
            (station,),
        )
    published: list[tuple[str, bytes]] = []
    settings = factories.settings(database_url, ingest_gap_grace_s=0.01, ingest_gap_request_max_s=3600)
    with ConnectionPool(database_url, min_size=1, max_size=4, name="gap-test") as pool:
        watches = [GapWatch(settings, pool, lambda t, p: published.append((t, p))) for _ in range(2)]
        with psycopg.connect(database_url) as other, other.transaction():
            other.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))  # another process's round
            assert watches[0].round() is False
        assert watches[0].counters.rounds_skipped == 1

        start = threading.Barrier(2)

        def rounds(watch: GapWatch) -> None:
            start.wait()
            for _ in range(20):
                watch.round()

        threads = [threading.Thread(target=rounds, args=(w,)) for w in watches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sum(w.counters.rounds for w in watches) >= 1
    # Each gap recorded once, and each request sent counted once on it (never two rounds sending the same one).
    found = open_gaps(database_url, station)
    assert [(first, last) for first, last, _ in found] == [(1, 2), (5, 8)]
    assert found[0][2] == found[1][2] == len(published) >= 1
    assert all(BatchRequest.parse(p).station_id == station for _, p in published)
    assert sum(w.counters.gaps_seen for w in watches) == 2


@pytest.mark.mosquitto
def test_with_two_workers_a_gap_is_seen_once_closed_once_and_their_metrics_add_up(database_url, topic_prefix):
    # Mosquitto: several workers need a shared subscription, which the embedded broker does not have.
    require_mosquitto()
    broker = start_broker("mosquitto")
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    publisher.username_pw_set(broker.username, broker.password)
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()

    def publish(topic: str, payload: bytes) -> None:
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)

    station = f"{topic_prefix}-w"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    workers = IngestWorkers(
        factories.settings(
            database_url,
            mqtt_url=broker.url,
            mqtt_client_id=f"gapw-{topic_prefix}",
            mqtt_shared_group=f"gapw-{topic_prefix}",
            ingest_workers=2,
            ingest_gap_grace_s=GRACE_S,
            ingest_gap_check_s=0.2,
            ingest_gap_request_max_s=60,
        )
    )
    workers.start()
    try:
        with listening(broker, topic_prefix) as requests:
            send_batches(publish, station, 0, 1, 2, 5, 6)
            wait_until(lambda: requests.of(station), what="a request")
            answer = BatchesGone(
                station_id=station,
                ranges=[GoneRange(first=3, last=4, reason="dropped")],
                next_batch_seq=7,
                sent_at=utcnow(),
            )
            publish(topics.station_topic(station, topics.GONE), answer.to_json())
            wait_until(lambda: workers.gap_counters.lost_by_station[station] == 2, what="two batches lost")
            time.sleep(GRACE_S)  # what a round of the other worker would have done meanwhile
            assert all(r == [(3, 4)] for r in requests.of(station))
        assert workers.gap_counters.gaps_seen == 1 and workers.gap_counters.batches_lost == 2
        samples = _samples(generate_latest(registry_for(workers)).decode())
        assert samples[("bikeguard_ingest_station_batches_lost_total", (("station", station),))] == 2
        assert samples[("bikeguard_ingest_station_gaps_seen_total", (("station", station),))] == 1
        assert sum(w.gap_counters.rounds for w in workers.workers) >= 2
    finally:
        workers.stop()
        publisher.disconnect()
        publisher.loop_stop()
        broker.stop()
