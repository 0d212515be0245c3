"""MQTT ingest: takes station messages from the broker and writes them in batched transactions.

One worker: paho's network thread validates what arrives and puts it in a lane. Alerts (a stolen chip's first
beacon) come on a broker connection, a lane and a writer of their own, so a stolen chip never waits behind sightings:
one connection delivers its messages in order, and while the sightings' lane is full (the backpressure) its thread
reads nothing more. A writer thread per lane sleeps until messages come, writes a whole
flush (many batches) in one transaction with a connection from the worker's pool, in which the alarm engine
judges what was new, then tells each station which of its batches are now stored (a confirmation, new and repeated
batches alike: the gateway keeps a batch until confirmed), and only then acknowledges the messages (manual PUBACK),
so a crash before commit means the broker (or the gateway) redelivers, and the batch ids make that harmless. A flush
of alerts commits without waiting for the disk, so that its alarms reach the police at once rather than behind the
sightings' log, and waits for the disk after: a crash in between loses an alarm already shown, and the redelivered
alert raises it again.
Self-test steps are stored the same way (backend.selftests); after the commit, a passing run commissions its station
if it is installed. The detectors whose cost is per query (cloned chips) judge the committed passages on a thread of
their own, about once a second.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from psycopg_pool import ConnectionPool

from backend import selftests
from backend.alarms import engine
from backend.alarms.evidence import Committed
from backend.broker_client import broker_client
from backend.ingest import gaps, writer
from backend.ingest.lanes import DeferredPassages, Lane
from backend.ingest.notices import StationNotices
from backend.ingest.rejects import kind_of
from backend.ingest.stations import UNKNOWN_REASON, KnownStations
from backend.ingest.v2 import V2Counters, V2Resolution
from backend.ingest.window import TimeWindow
from backend.settings import BackendSettings
from backend.vault import Vault
from backend.zones.crossings import ZoneCache
from protocol import topics
from protocol.messages import (
    CONFIRMATION_MAX_SEQS,
    Alert,
    BatchesGone,
    Confirmation,
    MessageError,
    SelfTestMessage,
    StationStatus,
    parse_batch_rows,
    parse_selftest,
    utcnow,
)

log = logging.getLogger(__name__)

DEFAULT_WINDOW = TimeWindow()
# At most this many flushes' passages in one round of the deferred detectors.
DEFERRED_ROUND_FLUSHES = 10

Message = dict[str, Any] | Alert | StationStatus | SelfTestMessage | BatchesGone


def validate(topic: str, payload: bytes, window: TimeWindow = DEFAULT_WINDOW) -> tuple[str, Message] | str:
    """(the station it comes from, the message) or why it is refused. Runs on paho's network thread, so that
    validating the next messages overlaps with the writer waiting on the database.

    A sightings batch comes with its raw bytes and their sha256 ("payload", "payload_sha256"), by which the writer
    tells a redelivery from a conflict. Reported times must fall in the window around the receive time."""
    try:
        where = topics.parse_station_topic(topic)
        msg: Message
        if where.kind == "sightings":
            batch = parse_batch_rows(payload)
            msg, claimed = batch, batch["station_id"]
        elif where.kind == topics.SELFTEST:
            selftest = parse_selftest(payload)
            msg, claimed = selftest, selftest.station_id
        elif where.kind == topics.GONE:
            gone = BatchesGone.parse(payload)
            msg, claimed = gone, gone.station_id
        else:
            report = (Alert if where.kind == "alerts" else StationStatus).parse(payload)
            msg, claimed = report, report.station_id
        if claimed != where.station_id:
            raise MessageError(
                f"station_id {claimed!r} in payload does not match topic station {where.station_id!r}", payload
            )
    except MessageError as exc:
        return exc.reason
    except topics.TopicError as exc:
        return f"topic: {exc}"
    if isinstance(msg, (dict, Alert, StationStatus)) and (refusal := window.refusal(msg, utcnow())) is not None:
        return refusal
    if isinstance(msg, dict):
        msg["payload"] = payload
        msg["payload_sha256"] = hashlib.sha256(payload).digest()
    return where.station_id, msg


@dataclass(frozen=True, slots=True)
class Incoming:
    """One MQTT message as it arrived, with what validate() made of it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    # The broker connection it came on, which acknowledges it (a message id is the connection's own).
    via: mqtt.Client
    checked: tuple[str, Message] | str | None = None


@dataclass
class IngestCounters:
    """What the ingest has done since it started; read by /api/health, /metrics and the benchmarks."""

    messages: int = 0
    batches_new: int = 0
    batches_repeated: int = 0
    # Batches reusing a stored (station_id, batch_seq) with other content; also counted in rejected["conflict"].
    batches_conflicting: int = 0
    sightings: int = 0
    alerts: int = 0
    statuses: int = 0
    selftest_steps: int = 0
    stations_commissioned: int = 0
    flushes: int = 0
    db_retries: int = 0
    confirmations: int = 0  # confirmation messages published to stations
    batches_confirmed: int = 0
    # By kind, from the fixed set in backend.ingest.rejects.
    rejected: Counter[str] = field(default_factory=Counter)
    # Per registered station (their number is bounded by the registry; unknown stations' messages, whose
    # topics anyone with broker access may invent, are counted by kind only).
    batches_confirmed_by_station: Counter[str] = field(default_factory=Counter)
    conflicts_by_station: Counter[str] = field(default_factory=Counter)


@dataclass
class _Flush:
    batches: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    statuses: list[StationStatus] = field(default_factory=list)
    selftest_messages: list[SelfTestMessage] = field(default_factory=list)
    gone: list[BatchesGone] = field(default_factory=list)  # stations' answers to the gap check's requests
    lost: list[gaps.Lost] = field(default_factory=list)  # what those answers closed
    rejects: list[tuple[str, str, bytes]] = field(default_factory=list)
    messages: list[Incoming] = field(default_factory=list)
    # Each valid message with the station it comes from, until screened against the registered stations.
    origins: list[tuple[Incoming, str]] = field(default_factory=list)
    rows: int = 0
    result: writer.WriteResult = field(default_factory=writer.WriteResult)
    stored: selftests.Stored = field(default_factory=selftests.Stored)
    # How far it got, so that a retry after a lost database does only what is left: written (committed), the
    # parts written (themselves, or one by one) with their self-tests.
    written: bool = False
    parts: list[_Flush] = field(default_factory=list)
    # Committed once already, and written again because that commit was not known to have reached the disk: the
    # counters keep what the first write stored (the same rows, whether its commit was lost or not).
    counted: bool = False


def classify(item: Incoming, flush: _Flush, window: TimeWindow = DEFAULT_WINDOW) -> None:
    """Add one validated message to the flush, or to the rejects with the reason."""
    checked = item.checked if item.checked is not None else validate(item.topic, item.payload, window)
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
    elif isinstance(msg, BatchesGone):
        flush.gone.append(msg)
    else:
        flush.selftest_messages.append(msg)


def _wait_for_disk(conn: psycopg.Connection) -> None:
    """Return once every commit made so far on `conn` has reached the disk: the commit of a transaction with an id
    waits for the log up to its own record, and so past every earlier one."""
    with conn.transaction():
        conn.execute("SELECT pg_current_xact_id()")


def screen(conn: psycopg.Connection, flush: _Flush, known: KnownStations) -> None:
    """Move the messages of stations that are not registered (or decommissioned) to the rejects."""
    refused = known.refused(conn, {sid for _, sid in flush.origins})
    if not refused:
        return
    flush.batches = [b for b in flush.batches if b["station_id"] not in refused]
    flush.alerts = [a for a in flush.alerts if a.station_id not in refused]
    flush.statuses = [s for s in flush.statuses if s.station_id not in refused]
    flush.selftest_messages = [m for m in flush.selftest_messages if m.station_id not in refused]
    flush.gone = [g for g in flush.gone if g.station_id not in refused]
    flush.rows = sum(len(b["sightings"]) for b in flush.batches)
    for item, sid in flush.origins:
        if sid in refused:
            flush.rejects.append((item.topic, known.reason(sid), item.payload))
    flush.origins = [(item, sid) for item, sid in flush.origins if sid not in refused]


# A worker's lanes: "sightings" (sightings batches, statuses, self-tests, batches gone) and "alerts".
LANES = ("sightings", "alerts")


class Ingest:
    """The MQTT→PostgreSQL ingest worker; several may run at once against one shared subscription. By default it
    takes both lanes; `lanes` may name one (the backend's own process takes only the alerts when its workers are
    processes of their own, backend.ingest.workers)."""

    def __init__(self, settings: BackendSettings, client_id: str | None = None, lanes: tuple[str, ...] = LANES) -> None:
        self.settings = settings
        self.lanes = lanes
        self.counters = IngestCounters()
        self.known = KnownStations(settings.ingest_station_refresh_s)
        self.window = TimeWindow.of(settings)
        self._theft_lookback = timedelta(seconds=settings.police_theft_lookback_s)
        # This worker's copy of the zones, for the border crossings of stolen chips' alarms.
        self._zones = ZoneCache()
        # A station sending what is refused (a clock gone wrong sends it all the time) is logged once a minute per
        # kind and topic; every refused message is still kept and counted.
        self._reject_notices = StationNotices(60.0)
        # One connection per writer thread and one for the deferred detectors, kept open, and one for a flush's v2
        # chip states (their own short transaction, beside the flush's); opened in start().
        self._pool = ConnectionPool(settings.database_url, min_size=4, max_size=6, open=False, name="ingest")
        # v2 chips' beacons resolved to their chips with the keys the vault opens (backend.ingest.v2).
        self.v2 = V2Resolution(
            Vault.from_settings(settings), past_windows=settings.ingest_v2_past_windows, states=self._pool
        )
        # Bounded: when the writer falls behind (a slow or lost database), paho's thread waits for room and the
        # broker keeps the backlog (it stops sending once our window of unacknowledged messages is full).
        self._sightings: Lane[Incoming] = Lane(settings.ingest_max_queued_messages)
        # Alerts (a stolen chip's first beacon) have a lane, a thread and a connection of their own, so
        # they never wait behind a backlog of sightings batches. Their lane has a bound of its own: alerts are small
        # (a few hundred bytes) and rare, so a generous bound costs little memory and a station flooding them
        # still cannot exhaust it.
        self._alerts: Lane[Incoming] = Lane(settings.ingest_max_queued_alerts)
        self._count_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._write_loop, args=(lane,), name=name, daemon=True)
            for lane, name, kind in (
                (self._sightings, "ingest-writer", "sightings"),
                (self._alerts, "ingest-alerts", "alerts"),
            )
            if kind in lanes
        ]
        # The detectors whose cost is mostly per query (cloned chips) judge many flushes' passages at once, on a
        # thread of their own: a clone's alarm may take a second where a stolen chip's may not. Once a second, not
        # once a flush: a round's fixed costs (its statistics, a pass over the chips) and each chip's position
        # update are then paid once for all of that second's passages (at 100,000 sightings/s a chip seen twice in
        # the second is moved once). The row bound only caps the memory of a round that fell behind.
        self._deferred = DeferredPassages(interval_s=1.0, max_rows=DEFERRED_ROUND_FLUSHES * settings.ingest_flush_rows)
        self._deferred_thread = threading.Thread(target=self._deferred_loop, name="ingest-deferred", daemon=True)
        # Missing batch_seqs: noticed, asked for and closed (backend.ingest.gaps), one process at a time.
        self.gaps = gaps.GapWatch(settings, self._pool, lambda topic, payload: self.client.publish(topic, payload, 1))
        self._gap_thread = threading.Thread(
            target=self.gaps.run, args=(self._stopping,), name="ingest-gaps", daemon=True
        )
        self.client_id = client_id or settings.mqtt_client_id
        group = settings.mqtt_shared_group or None
        # Two connections to the broker, each with its subscriptions and its lane: the alerts' own keeps a stolen
        # chip's alert from waiting behind a backlog of sightings batches (a drain after an outage, a flood of v2
        # beacons to resolve), which the broker sends on one connection in order and paho reads no further while
        # their lane is full.
        self._receivers = []
        if "sightings" in lanes:
            kinds = [k for k in topics.STATION_KINDS if k != "alerts"]
            self._receivers.append(
                _Receiver(settings, self._stopping, self._take, self.client_id, kinds, group, self._sightings)
            )
        if "alerts" in lanes:
            self._receivers.append(
                _Receiver(
                    settings, self._stopping, self._take, f"{self.client_id}-alerts", ["alerts"], group, self._alerts
                )
            )
        # The passages' own threads: the deferred detectors and the gap check.
        self._background = [self._deferred_thread, self._gap_thread] if "sightings" in lanes else []
        # The main connection publishes (confirmations, requests for missing batches); tests reach its subscriptions.
        self.client = self._receivers[0].client

    def _take(self, via: mqtt.Client, lane: Lane[Incoming], msg: mqtt.MQTTMessage) -> None:
        """A message from the broker (on paho's network thread of its connection): validated, into its lane."""
        payload = bytes(msg.payload)
        # Waits while the lane is full (the backpressure); refused only once stop() closed it: unacknowledged,
        # the message is the broker's to redeliver.
        lane.put(Incoming(msg.topic, payload, msg.mid, msg.qos, via, validate(msg.topic, payload, self.window)))

    # what operators see (/api/health, /metrics)

    @property
    def broker_connected(self) -> bool:
        """Whether the broker is connected and our subscriptions acknowledged, on both connections."""
        return all(r.connected.is_set() for r in self._receivers)

    @property
    def v2_counters(self) -> V2Counters:
        """What this worker's resolution of v2 beacons has done."""
        return self.v2.counters

    @property
    def gap_counters(self) -> gaps.GapCounters:
        """What this worker's gap check and flushes have done about missing batches."""
        return self.gaps.counters

    @property
    def batches_missing_now(self) -> dict[str, int]:
        """Batches asked for and still missing, per station, as of the last gap check."""
        return self.gaps.missing_now

    def queued(self) -> dict[str, int]:
        """Messages waiting in each of its lanes."""
        return {
            kind: len(lane)
            for kind, lane in (("sightings", self._sightings), ("alerts", self._alerts))
            if kind in self.lanes
        }

    def threads(self) -> dict[str, bool]:
        """Whether each of the ingest's threads is alive."""
        return {t.name: t.is_alive() for t in (*self._threads, *self._background)}

    # life cycle

    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect to the broker and start writing; waits until the subscriptions are acknowledged (None: not)."""
        self._pool.open(wait=False)  # connects in the background; a database that is down is retried
        for receiver in self._receivers:
            receiver.start()
        for thread in (*self._threads, *self._background):
            thread.start()
        threading.Thread(target=self.v2.prepare, args=(self._pool,), name="ingest-v2-table", daemon=True).start()
        if wait_s is not None:
            self.wait_connected(wait_s)

    def wait_connected(self, wait_s: float) -> bool:
        """Wait until the broker acknowledged our subscriptions; False (and a warning) after wait_s."""
        deadline = time.monotonic() + wait_s
        if all(r.connected.wait(max(deadline - time.monotonic(), 0.0)) for r in self._receivers):
            return True
        log.warning("ingest %s not connected to the broker after %.0f s; still trying", self.client_id, wait_s)
        return False

    def stop(self) -> None:
        """Finish what is queued, then disconnect."""
        self._stopping.set()
        self._sightings.close()
        self._alerts.close()
        for thread in self._threads:
            thread.join(timeout=30)
        self._deferred.close()  # after the writers: it judges what they handed it last
        self.gaps.wake()
        for thread in self._background:
            thread.join(timeout=30)
        # Both told first, then waited for: a connection's thread waiting to reconnect to a broker that is gone
        # notices within a second, and the two then take one second, not two.
        for receiver in self._receivers:
            receiver.client.disconnect()
        for receiver in self._receivers:
            receiver.client.loop_stop()
        self._pool.close()

    # database side (the writer threads)

    def _collect(self, lane: Lane[Incoming]) -> _Flush:
        """The next flush: sleeps until a message comes, then gathers for up to the flush interval (an alert, or a
        full flush, ends it at once) and whatever else is already queued. Empty once the lane is closed."""
        flush = _Flush()
        until: float | None = None
        while flush.rows < self.settings.ingest_flush_rows and not flush.alerts:
            item = lane.take(until)
            if item is None:
                break
            flush.messages.append(item)
            classify(item, flush, self.window)
            if until is None:
                until = time.monotonic() + self.settings.ingest_flush_interval_s
        # Take what is already queued without waiting, up to the flush size.
        while flush.rows < self.settings.ingest_flush_rows:
            item = lane.take_now()
            if item is None:
                break
            flush.messages.append(item)
            classify(item, flush, self.window)
        return flush

    def _write_loop(self, lane: Lane[Incoming]) -> None:
        while True:
            flush = self._collect(lane)
            if not flush.messages:
                return  # closed, and nothing left
            self._settle(flush)

    def _settle(self, flush: _Flush) -> None:
        """Write the flush (its alarms with it) and commission what passed; retried while the database is away (only
        the steps not yet done); then acknowledge its messages."""
        backoff = 0.5
        while True:
            try:
                with self._pool.connection() as conn:
                    self._write(conn, flush)
                break
            except psycopg.OperationalError as exc:
                if self._pool.closed:
                    # stop() gave up waiting for us: unacknowledged, the messages are the broker's to redeliver.
                    log.error("ingest stopped with a flush of %d messages unwritten: %s", len(flush.messages), exc)
                    return
                # The database went away: keep the flush (nothing is acknowledged yet) and retry.
                log.error("database unavailable, retrying in %.1f s: %s", backoff, exc)
                self.counters.db_retries += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        with self._count_lock:
            self.counters.messages += len(flush.messages)
            self.counters.flushes += 1
        self._confirm(flush)
        for item in flush.messages:
            if item.qos > 0:
                item.via.ack(item.mid, item.qos)
        # Only the passages: no deferred detector reads alerts, and a round without passages costs nothing.
        self._deferred.add(Committed(flush.result.committed.passages))

    def _confirm(self, flush: _Flush) -> None:
        """Tell each station of the flush which of its batches are committed: one message per station (split past
        CONFIRMATION_MAX_SEQS), QoS 1 and not awaited. A lost confirmation costs only a resend, which is harmless.
        A batch kept as a conflict is confirmed too: its raw bytes are stored, and a resend could not change that."""
        stored: dict[str, list[int]] = {}
        for part in flush.parts:
            for batch in part.batches:
                stored.setdefault(batch["station_id"], []).append(batch["batch_seq"])
        sent = 0
        for station_id, seqs in stored.items():
            topic = topics.confirmations_topic(station_id)
            for i in range(0, len(seqs), CONFIRMATION_MAX_SEQS):
                chunk = seqs[i : i + CONFIRMATION_MAX_SEQS]
                message = Confirmation(station_id=station_id, batch_seqs=chunk, sent_at=utcnow())
                self.client.publish(topic, message.to_json(), qos=1)
                sent += 1
        with self._count_lock:
            self.counters.confirmations += sent
            self.counters.batches_confirmed += sum(len(seqs) for seqs in stored.values())
            for station_id, seqs in stored.items():
                self.counters.batches_confirmed_by_station[station_id] += len(seqs)

    def _deferred_loop(self) -> None:
        """Judge the committed passages with the deferred detectors (cloned chips) as they fall due."""
        detectors = engine.deferred(self.settings.clone_max_speed_kmh)
        while (due := self._deferred.take()) is not None:
            try:
                with self._pool.connection() as conn:
                    engine.raise_alarms(conn, due, detectors)
            except psycopg.OperationalError as exc:
                if self._stopping.is_set() or self._pool.closed:
                    log.error(
                        "cloned-chip check of %d passages dropped, the database is unavailable: %s", len(due), exc
                    )
                    continue
                log.error("cloned-chip check postponed, the database is unavailable: %s", exc)
                self._deferred.add(due)
                time.sleep(1.0)
            except psycopg.Error:
                log.exception("cloned-chip check of %d passages failed; they are not judged", len(due))

    def _write(self, conn: psycopg.Connection, flush: _Flush) -> None:
        if not flush.written:
            self._store(conn, flush)
            flush.written = True
            if flush.alerts:
                try:
                    _wait_for_disk(conn)
                except psycopg.OperationalError:
                    # Its commit may be lost with the server: written again (idempotent), and counted once.
                    flush.written, flush.counted = False, True
                    raise
        for part in flush.parts:
            self._commission(conn, part)

    def _store(self, conn: psycopg.Connection, flush: _Flush) -> None:
        """Write the flush in one transaction; if the database refuses it, its messages one by one."""
        flush.parts = [flush]
        try:
            with conn.transaction():
                if flush.alerts:
                    # A stolen chip's alarm is on the police's screen at its commit, not once the commit has
                    # reached the disk behind the sightings' log (the tail of its latency): _write waits for the
                    # disk after, and only then are the messages acknowledged.
                    conn.execute("SET LOCAL synchronous_commit = off")
                self._write_all(conn, flush)
            self._count(flush)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            # One bad message must not cost the others: write them one by one, reject the ones refused.
            log.warning("flush of %d messages refused (%s); writing them one by one", len(flush.messages), exc)
            flush.parts = []
            flush.result = writer.WriteResult()  # what the refused transaction wrote is gone
            for item in flush.messages:
                single = _Flush(counted=flush.counted)
                classify(item, single, self.window)
                try:
                    with conn.transaction():
                        self._write_all(conn, single)
                    self._count(single)
                    flush.result.committed.extend(single.result.committed)
                    flush.parts.append(single)
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as one_exc:
                    reason = f"database refused the message: {type(one_exc).__name__}: {one_exc}".strip()
                    with conn.transaction():
                        writer.write_rejects(
                            conn, [(item.topic, reason[:500], item.payload)], self.settings.ingest_reject_max_raw_bytes
                        )
                    if not flush.counted:
                        self.counters.rejected["database"] += 1

    def _write_all(self, conn: psycopg.Connection, flush: _Flush) -> None:
        if flush.gone:
            gaps.wait_for_round(conn)  # before any row is locked: the answers are closed against the gaps as they are
        screen(conn, flush, self.known)
        flush.result = writer.write_alerts(conn, self.v2.resolve_alerts(conn, flush.alerts))
        flush.result.add(writer.write_batches(conn, flush.batches, self.v2.resolve_sightings))
        flush.lost = gaps.close_lost(conn, flush.gone)
        writer.write_rejects(conn, flush.result.conflicts, self.settings.ingest_reject_max_raw_bytes)
        received_at = utcnow()
        # By station: two workers upserting the same stations lock them in one order (no deadlock).
        for status in sorted(flush.statuses, key=lambda st: st.station_id):
            writer.write_status(conn, status, received_at)
        flush.stored = selftests.write(conn, flush.selftest_messages)
        writer.write_rejects(conn, flush.rejects, self.settings.ingest_reject_max_raw_bytes)
        # In the same transaction as the write: a committed passage of a stolen chip has its alarm, crash or not.
        engine.raise_alarms(conn, flush.result.committed, engine.ON_COMMIT, self._theft_lookback, self._zones)

    def _commission(self, conn: psycopg.Connection, flush: _Flush) -> None:
        """After the commit: an installed station whose self-test passed becomes commissioned.

        A lost database raises (retried, and passes again); any other refusal is logged and the station stays as
        it is.
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
        """Count a committed flush (unless it was counted when it was first written)."""
        if flush.counted:
            return
        with self._count_lock:
            self._count_locked(flush)
        self.gaps.counted(flush.lost)

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
            kind = kind_of(reason)
            c.rejected[kind] += 1
            if self._reject_notices.due(f"{kind} {topic}"):
                log.warning(
                    "rejected message on %s: %s; raw %r (kept in rejected_messages; next warning of this kind for"
                    " this topic in 60 s at the earliest)",
                    topic,
                    reason,
                    raw[:200],
                )
        c.batches_conflicting += len(result.conflicts)
        c.rejected["conflict"] += len(result.conflicts)
        for topic, reason, _raw in result.conflicts:
            # A conflict is a batch of a registered station (screened before the write), so its topic parses.
            c.conflicts_by_station[topics.parse_station_topic(topic).station_id] += 1
            if self._reject_notices.due(f"conflict {topic}"):
                log.warning(
                    "%s; kept in rejected_messages with its raw bytes (next warning for this station in 60 s at the"
                    " earliest): its gateway reused a batch_seq, e.g. after its spool was replaced",
                    reason,
                )


class _Receiver:
    """One of a worker's broker connections: the station kinds it subscribes to, and the lane they go to."""

    def __init__(
        self,
        settings: BackendSettings,
        stopping: threading.Event,
        take: Callable[[mqtt.Client, Lane[Incoming], mqtt.MQTTMessage], None],
        client_id: str,
        kinds: list[str],
        group: str | None,
        lane: Lane[Incoming],
    ) -> None:
        self.client_id = client_id
        self.filters = [topics.station_filter(kind, group) for kind in kinds]
        # What a session of the same client id subscribed to before (the worker had one connection for every kind
        # until alerts got their own): the broker would go on sending those here too.
        self.others = [topics.station_filter(k, group) for k in topics.STATION_KINDS if k not in kinds]
        self.connected = threading.Event()
        self._stopping = stopping
        client, self.address = broker_client(
            settings,
            client_id,
            clean_session=False,  # the broker keeps our QoS 1 messages while we are away
            manual_ack=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = lambda _c, _u, msg: take(client, lane, msg)
        client.on_subscribe = self._on_subscribe
        self.client = client

    def start(self) -> None:
        self.client.connect_async(*self.address, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the ingest connection %s: %s", self.client_id, reason)
            return
        client.unsubscribe(self.others)
        client.subscribe([(f, 1) for f in self.filters])
        log.info("ingest %s connected to %s:%d (%s)", self.client_id, *self.address, ", ".join(self.filters))

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[Any], _p: object) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("broker refused the ingest subscriptions of %s: %s", self.client_id, failed)
            return
        # Only now does the broker route station messages to us.
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            log.warning("ingest %s lost the broker (%s); paho reconnects", self.client_id, reason)
