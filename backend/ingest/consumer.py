"""MQTT ingest: takes station messages from the broker and writes them in batched transactions.

The paho network thread only queues what arrives. One writer thread validates, writes a whole
flush (many batches) in one transaction and only then acknowledges the messages (manual PUBACK),
so a crash before commit means the broker redelivers, and the batch ids make that harmless.
Self-test steps are stored the same way (backend.selftests); after the commit, a passing run
commissions its station if it is installed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from backend import alarms, selftests
from backend.ingest import writer
from backend.ingest.stations import UNKNOWN_REASON, KnownStations
from backend.settings import BackendSettings
from bikeguard.services import mqtt_address
from protocol import topics
from protocol.messages import (
    Alert,
    MessageError,
    SelfTestStep,
    SelfTestSummary,
    StationStatus,
    parse_batch_rows,
    parse_selftest,
    utcnow,
)

log = logging.getLogger(__name__)


Message = dict[str, Any] | Alert | StationStatus | SelfTestStep | SelfTestSummary


def validate(topic: str, payload: bytes) -> tuple[str, Message] | str:
    """(the station it comes from, the message) or why it is refused. Runs on paho's network thread, so that
    validating the next messages overlaps with the writer waiting on the database."""
    try:
        where = topics.parse_station_topic(topic)
        msg: Message
        if where.kind == "sightings":
            msg = parse_batch_rows(payload)
            claimed = msg["station_id"]
        elif where.kind == topics.SELFTEST:
            msg = parse_selftest(payload)
            claimed = msg.station_id
        else:
            msg = (Alert if where.kind == "alerts" else StationStatus).parse(payload)
            claimed = msg.station_id
        if claimed != where.station_id:
            raise MessageError(
                f"station_id {claimed!r} in payload does not match topic station {where.station_id!r}", payload
            )
    except (MessageError, topics.TopicError) as exc:
        return exc.reason if isinstance(exc, MessageError) else str(exc)
    return where.station_id, msg


@dataclass(frozen=True, slots=True)
class Incoming:
    """One MQTT message as it arrived, with what validate() made of it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    checked: tuple[str, Message] | str | None = None


@dataclass
class IngestCounters:
    """What the ingest has done since it started; read by /api/metrics and the benchmarks."""

    messages: int = 0
    batches_new: int = 0
    batches_repeated: int = 0
    sightings: int = 0
    alerts: int = 0
    statuses: int = 0
    selftest_steps: int = 0
    stations_commissioned: int = 0
    flushes: int = 0
    db_retries: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass
class _Flush:
    batches: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    statuses: list[StationStatus] = field(default_factory=list)
    selftest_messages: list[SelfTestStep | SelfTestSummary] = field(default_factory=list)
    rejects: list[tuple[str, str, bytes]] = field(default_factory=list)
    messages: list[Incoming] = field(default_factory=list)
    # Each valid message with the station it comes from, until screened against the registered stations.
    origins: list[tuple[Incoming, str]] = field(default_factory=list)
    rows: int = 0
    result: writer.WriteResult = field(default_factory=writer.WriteResult)
    stored: selftests.Stored = field(default_factory=selftests.Stored)


def classify(item: Incoming, flush: _Flush) -> None:
    """Add one validated message to the flush, or to the rejects with the reason."""
    checked = item.checked if item.checked is not None else validate(item.topic, item.payload)
    if isinstance(checked, str):
        flush.rejects.append((item.topic, checked, item.payload))
        return
    station_id, msg = checked
    flush.origins.append((item, station_id))
    if isinstance(msg, dict):
        flush.batches.append(msg)
        flush.rows += len(msg["sightings"])
    elif isinstance(msg, Alert):
        flush.alerts.append(msg)
    elif isinstance(msg, StationStatus):
        flush.statuses.append(msg)
    else:
        flush.selftest_messages.append(msg)


def screen(conn: psycopg.Connection, flush: _Flush, known: KnownStations) -> None:
    """Move the messages of stations that are not registered (or decommissioned) to the rejects."""
    refused = known.refused(conn, {sid for _, sid in flush.origins})
    if not refused:
        return
    flush.batches = [b for b in flush.batches if b["station_id"] not in refused]
    flush.alerts = [a for a in flush.alerts if a.station_id not in refused]
    flush.statuses = [s for s in flush.statuses if s.station_id not in refused]
    flush.selftest_messages = [m for m in flush.selftest_messages if m.station_id not in refused]
    flush.rows = sum(len(b["sightings"]) for b in flush.batches)
    for item, sid in flush.origins:
        if sid in refused:
            flush.rejects.append((item.topic, known.reason(sid), item.payload))
    flush.origins = [(item, sid) for item, sid in flush.origins if sid not in refused]


class Ingest:
    """The MQTT→PostgreSQL ingest worker; several may run at once against one shared subscription."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.counters = IngestCounters()
        self.known = KnownStations(settings.ingest_station_refresh_s)
        self._queue: queue.Queue[Incoming] = queue.Queue()
        # Alerts (a stolen chip's first beacon) have a lane, a thread and a connection of their own, so
        # they never wait behind a backlog of sightings batches.
        self._alerts: queue.Queue[Incoming] = queue.Queue()
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._threads = [
            threading.Thread(target=self._write_loop, args=(self._queue,), name="ingest-writer", daemon=True),
            threading.Thread(target=self._write_loop, args=(self._alerts,), name="ingest-alerts", daemon=True),
        ]
        # The cloned-chip check has a thread and a connection of its own too: the sightings writer hands it the
        # passages of each committed flush and goes on with the next.
        self._clone_lane: queue.Queue[alarms.Passages] = queue.Queue()
        self._clone_thread = threading.Thread(target=self._clone_loop, name="ingest-clones", daemon=True)
        host, port, user, password = mqtt_address(settings.mqtt_url)
        self._address = (host, port)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            clean_session=False,  # the broker keeps our QoS 1 messages while we are away
            manual_ack=True,
        )
        if user:
            client.username_pw_set(user, password)
        client.reconnect_delay_set(0.5, 30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client

    # MQTT side (paho's network thread)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the ingest connection: %s", reason)
            return
        group = self.settings.mqtt_shared_group or None
        client.subscribe([(topics.station_filter(kind, group), 1) for kind in topics.STATION_KINDS])
        log.info("ingest connected to %s:%d (shared group %s)", *self._address, group)

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[Any], _p: object) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("broker refused the ingest subscriptions: %s", failed)
            return
        # Only now does the broker route station messages to us.
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingest lost the broker (%s); paho reconnects", reason)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        lane = self._alerts if msg.topic.endswith("/alerts") else self._queue
        lane.put(Incoming(msg.topic, msg.payload, msg.mid, msg.qos, validate(msg.topic, msg.payload)))

    # life cycle

    def start(self, wait_s: float = 10.0) -> None:
        """Connect to the broker and start writing; waits until the subscriptions are acknowledged."""
        self.client.connect_async(*self._address, keepalive=30)
        self.client.loop_start()
        for thread in self._threads:
            thread.start()
        self._clone_thread.start()
        if not self._connected.wait(wait_s):
            log.warning("ingest not connected to the broker after %.0f s; still trying", wait_s)

    def stop(self) -> None:
        """Finish the current flush, then disconnect."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._clone_thread.join(timeout=30)  # after the writers: it judges what they handed it last
        self.client.disconnect()
        self.client.loop_stop()

    # database side (the writer thread)

    def _collect(self, lane: queue.Queue[Incoming]) -> _Flush:
        flush = _Flush()
        deadline: float | None = None
        while not self._stop.is_set():
            timeout = 0.2 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = lane.get(timeout=timeout)
            except queue.Empty:
                if deadline is not None:
                    break
                continue
            flush.messages.append(item)
            classify(item, flush)
            if deadline is None:
                deadline = time.monotonic() + self.settings.ingest_flush_interval_s
            # Alerts are urgent; statuses and rejects ride along with whatever comes next.
            if flush.alerts or flush.rows >= self.settings.ingest_flush_rows:
                break
        # Drain what is already queued without waiting, up to the flush size.
        while flush.rows < self.settings.ingest_flush_rows:
            try:
                item = lane.get_nowait()
            except queue.Empty:
                break
            flush.messages.append(item)
            classify(item, flush)
        return flush

    def _write_loop(self, lane: queue.Queue[Incoming]) -> None:
        conn: psycopg.Connection | None = None
        backoff = 0.5
        flush = _Flush()
        while True:
            if not flush.messages:
                if self._stop.is_set() and lane.empty():
                    break
                flush = self._collect(lane)
                if not flush.messages:
                    continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.settings.database_url)
                self._write(conn, flush)
            except psycopg.OperationalError as exc:
                # The database went away: keep the flush (nothing is acknowledged yet) and retry.
                log.error("database unavailable, retrying in %.1f s: %s", backoff, exc)
                self.counters.db_retries += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            for item in flush.messages:
                if item.qos > 0:
                    self.client.ack(item.mid, item.qos)
            if flush.result.passages.tag_ids:
                self._clone_lane.put(flush.result.passages)
            flush = _Flush()
        if conn is not None:
            conn.close()

    def _clone_loop(self) -> None:
        """Judge the committed passages for cloned chips about once a second (writer.CloneCheck)."""
        clones = writer.CloneCheck(self.settings.clone_max_speed_kmh, max_rows=self.settings.ingest_flush_rows)
        conn: psycopg.Connection | None = None
        while True:
            writers_done = not any(t.is_alive() for t in self._threads) and self._stop.is_set()
            try:
                clones.add(self._clone_lane.get(timeout=0.2))
                while not self._clone_lane.empty():
                    clones.add(self._clone_lane.get_nowait())
            except queue.Empty:
                pass
            if not (clones.due() or (writers_done and clones.pending.tag_ids)):
                if writers_done and self._clone_lane.empty():
                    break
                continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.settings.database_url)
                clones.run(conn)
            except psycopg.OperationalError as exc:
                log.error("cloned-chip check postponed, the database is unavailable: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
                if writers_done:
                    break
                time.sleep(1.0)
            except psycopg.Error:
                log.exception("cloned-chip check of %d passages failed; they are not judged",
                              len(clones.pending.tag_ids))
                clones.pending = alarms.Passages.empty()
        if conn is not None:
            conn.close()

    def _write(self, conn: psycopg.Connection, flush: _Flush) -> None:
        written = [flush]
        try:
            with conn.transaction():
                self._write_all(conn, flush)
            self._count(flush)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            # One bad message must not cost the others: write them one by one, reject the ones refused.
            log.warning("flush of %d messages refused (%s); writing them one by one", len(flush.messages), exc)
            written = []
            flush.result = writer.WriteResult()  # what the refused transaction wrote is gone
            for item in flush.messages:
                single = _Flush()
                classify(item, single)
                try:
                    with conn.transaction():
                        self._write_all(conn, single)
                    self._count(single)
                    flush.result.passages.extend(single.result.passages)
                    written.append(single)
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as one_exc:
                    reason = f"database refused the message: {type(one_exc).__name__}: {one_exc}".strip()
                    with conn.transaction():
                        writer.write_rejects(conn, [(item.topic, reason[:500], item.payload)])
                    self.counters.rejected["database"] += 1
        for done in written:
            self._commission(conn, done)
        with self._count_lock:
            self.counters.messages += len(flush.messages)
            self.counters.flushes += 1

    def _write_all(self, conn: psycopg.Connection, flush: _Flush) -> None:
        screen(conn, flush, self.known)
        flush.result = writer.write_alerts(conn, flush.alerts)
        flush.result.add(writer.write_batches(conn, flush.batches, self.settings.clone_max_speed_kmh,
                                              check_clones=False))
        received_at = utcnow()
        for status in flush.statuses:
            writer.write_status(conn, status, received_at)
        flush.stored = selftests.write(conn, flush.selftest_messages)
        writer.write_rejects(conn, flush.rejects)

    def _commission(self, conn: psycopg.Connection, flush: _Flush) -> None:
        """After the commit: an installed station whose self-test passed becomes commissioned.

        A lost database raises (the flush is retried, and passes again); any other refusal is logged and the
        station stays as it is.
        """
        for station_id, run_id in flush.stored.passed:
            try:
                moved = selftests.commission(conn, station_id, run_id)
            except psycopg.OperationalError:
                raise
            except psycopg.Error:
                log.exception("station %s could not be commissioned after self-test run %s", station_id, run_id)
                continue
            if moved:
                log.info("station %s commissioned: its self-test run %s passed", station_id, run_id)
                with self._count_lock:
                    self.counters.stations_commissioned += 1

    def _count(self, flush: _Flush) -> None:
        """Count a committed flush."""
        with self._count_lock:
            self._count_locked(flush)

    def _count_locked(self, flush: _Flush) -> None:
        c, result = self.counters, flush.result
        c.batches_new += result.batches_new
        c.batches_repeated += result.batches_repeated
        c.sightings += result.sightings
        c.alerts += result.alerts_new
        c.statuses += len(flush.statuses)
        c.selftest_steps += flush.stored.steps_new
        for topic, reason, raw in flush.rejects:
            if reason.startswith(UNKNOWN_REASON + " "):
                # A station publishing before it is registered sends all the time: say so once a minute.
                c.rejected[UNKNOWN_REASON] += 1
                self.known.warn(reason.removeprefix(UNKNOWN_REASON + " "), topic)
                continue
            c.rejected[reason.split(":", 1)[0]] += 1
            log.warning("rejected message on %s: %s; raw %r", topic, reason, raw[:200])
