"""The wiring: radio -> aggregator -> spool -> uplink for one station; several stations in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from prometheus_client.core import Metric

from gateway import metrics
from gateway.aggregator import Aggregator, TagKey
from gateway.gps import Gps
from gateway.hotlist import HotList
from gateway.radio import Radio, Reception
from gateway.rejected_runs import RejectedRunsFile
from gateway.settings import GatewaySettings
from gateway.spool import Spool
from gateway.uplink import Uplink
from protocol.frames import Beacon, BeaconV2
from protocol.messages import Alert, Sighting, SightingBatch, StationStatus, utcnow
from protocol.topics import station_topic

log = logging.getLogger(__name__)

# A station that ran this long before failing starts its restart backoff afresh.
_STABLE_RUN_S = 60.0


class Receiver(Protocol):
    """Where a station's frames come from: its radio module (gateway.radio.Radio), or a vendor station's TCP
    link to the bridge (gateway.vendor.link.VendorLink)."""

    rejected_runs: RejectedRunsFile | None
    dropped: int
    port_errors: int
    # Whether the sender keeps what is not acknowledged (a vendor station resends an upload without a reply): then
    # every read is checkpointed in the spool before `spooled` says so, and only then acknowledged.
    acknowledges: bool

    @property
    def frames(self) -> int:
        """Valid frames decoded since start."""

    @property
    def rejected(self) -> Counter[str]:
        """Rejected byte runs by reason."""

    @property
    def rejected_total(self) -> int:
        """All rejected byte runs."""

    @property
    def on_air(self) -> bool:
        """Whether the station hears tags now (False: its status says offline)."""

    async def run(self) -> None:
        """Receive until cancelled."""

    async def receive(self) -> list[Reception]:
        """The frames that came since the last call, in order: at least one (waits for it)."""

    def take(self) -> list[Reception]:
        """The frames that came since the last call, in order, without waiting (perhaps none)."""

    def spooled(self) -> None:
        """Every frame taken with `receive` so far is safe in the spool (its passage checkpointed or its sighting
        spooled)."""


class Station:
    """One station's gateway: `await run()` until cancelled."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        receiver: Receiver | None = None,
        spool_fsync: bool = True,
        pace: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """`spool_fsync=False`: the spool's commits do not wait for the disk, and whoever runs the station syncs it
        (gateway.spool_sync) before relying on what it holds. `pace`: the slot its batch ticks and its uplink's work
        wait for, in a process of many stations (gateway.pacer); by default none."""
        self.settings = settings
        self.spool_fsync = spool_fsync
        self.pace = pace
        self.clock = clock
        self._receiver = receiver  # None: the radio module on settings.serial_url
        self.sightings_topic = station_topic(settings.station_id, "sightings")
        self.alerts_topic = station_topic(settings.station_id, "alerts")
        self.hotlist = HotList(clock=clock)
        # A mobile reader also reads its GPS receiver; each sighting then carries the reader's position.
        self.gps = (
            Gps(
                settings.gps_url,
                settings.gps_baud_rate,
                fix_max_age_s=settings.gps_fix_max_age_s,
                reopen_min_s=settings.serial_reopen_min_s,
                reopen_max_s=settings.serial_reopen_max_s,
                clock=clock,
            )
            if settings.gps_url
            else None
        )
        self.aggregator = Aggregator(
            settings.station_id,
            self.hotlist,
            passage_gap_s=settings.passage_gap_s,
            passage_max_s=settings.passage_max_s,
            clock=clock,
            locate=self.gps.position_at if self.gps else None,
        )
        self.noise_floor_dbm: int | None = None
        self.spool: Spool | None = None
        self.radio: Receiver | None = None
        self.uplink: Uplink | None = None
        self._started = time.monotonic()
        # What the spool's open-passage checkpoint holds: tag id (v1) or eid (v2) -> first_seen_at of that passage.
        self._checkpointed: dict[TagKey, datetime] = {}
        self._checkpoint_refreshed = time.monotonic()
        # Tags heard since the last checkpoint, whose passages it rewrites when the receiver acknowledges reads.
        self._touched: set[TagKey] = set()
        self.restarts = 0  # by the fleet's supervisor, after this station's task failed
        # Whether `take_now` may take the receiver's frames (the station runs and its consume task is started), and
        # what a failure there fails the station's run with.
        self._taking_now = False
        self._failure: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Run until cancelled; then spool the open passages and say offline."""
        s = self.settings
        # A new spool file starts its batch numbers at the clock in milliseconds, so a station whose
        # spool was lost or replaced never reuses a (station_id, batch_seq) the backend has seen.
        first_seq = int(self.clock().timestamp() * 1000)
        self.spool = spool = Spool(
            s.spool_file,
            max_bytes=s.spool_max_bytes,
            first_batch_seq=first_seq,
            drop_log_interval_s=s.spool_drop_log_interval_s,
            fsync=self.spool_fsync,
        )
        saved = spool.load_hotlist()
        if saved is not None:
            self.hotlist.offer(*saved, spool.load_hotlist_eids())
        # Passages open when the last run died (SIGKILL, power cut) go on where they were.
        restored = spool.load_passages()
        self.aggregator.restore(restored)
        self._checkpointed = {p.tag: p.first_seen_at for p in restored}
        self._checkpoint_refreshed = time.monotonic()
        self.radio = self._receiver or Radio.of_station(s, clock=self.clock)
        self.uplink = Uplink(s, spool, self.hotlist, self.status, self.pace)
        self._started = time.monotonic()
        log.info(
            "station %s: serial %s, broker %s, spool %s (%d waiting, %d open passages restored), hot list v%d",
            s.station_id,
            s.serial_url,
            s.mqtt_endpoint,
            s.spool_file,
            spool.depth,
            len(restored),
            self.hotlist.version,
        )
        self._failure = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.radio.run())
                tasks.create_task(self._consume(self.radio))
                tasks.create_task(self._failed(self._failure))
                tasks.create_task(self._batch_every_interval())
                tasks.create_task(self.uplink.run())
                if self.gps is not None:
                    tasks.create_task(self.gps.run())
        finally:
            # Whatever is still open goes to the spool and leaves with the next connection.
            self._spool_sightings(self.aggregator.close_all())
            spool.close()
            log.info("station %s: stopped", s.station_id)

    def status(self) -> StationStatus:
        """The status this station publishes (retained) now."""
        radio, spool, uplink = self.radio, self.spool, self.uplink
        return StationStatus(
            station_id=self.settings.station_id,
            state="online" if radio is None or radio.on_air else "offline",
            sent_at=self.clock(),
            firmware=self.settings.firmware,
            uptime_s=round(time.monotonic() - self._started, 3),
            beacons_total=self.aggregator.beacons_total,
            frames_rejected=radio.rejected_total if radio else 0,
            sightings_published=uplink.sightings_published if uplink else 0,
            spool_depth=spool.depth if spool else 0,
            spool_unconfirmed=spool.unconfirmed if spool else 0,
            spool_dropped=spool.dropped if spool else 0,
            hotlist_version=self.hotlist.version if self.hotlist else None,
            noise_floor_dbm=self.noise_floor_dbm,
        )

    def status_changed(self) -> None:
        """Publish the status now (the receiver went on or off the air)."""
        if self.uplink is not None:
            self.uplink.status_changed()

    def figures(self) -> metrics.StationFigures:
        """Its counters now for /metrics (on the event loop's thread: the spool is read here)."""
        figures = metrics.StationFigures(self.settings.station_id)
        spool, uplink, radio = self.spool, self.uplink, self.radio
        figures.counters["beacons"] = self.aggregator.beacons_total
        figures.counters["beacons_v2"] = self.aggregator.beacons_v2_total
        figures.gauges["hotlist_tags"] = len(self.hotlist.tags)
        figures.gauges["hotlist_eids"] = self.hotlist.eid_count
        figures.counters["station_restarts"] = self.restarts
        if spool is not None:
            figures.gauges["spool_depth"] = spool.depth
            figures.gauges["spool_unconfirmed"] = spool.unconfirmed
            figures.gauges["spool_bytes"] = spool.size_bytes
            figures.counters["spool_dropped_sightings"] = spool.dropped_sightings
            figures.counters["spool_dropped_alerts"] = spool.dropped_alerts
            figures.counters["spool_dropped_batches"] = spool.dropped_batches
        if uplink is not None:
            figures.gauges["uplink_connected"] = int(uplink.connected)
            figures.counters["uplink_connects"] = uplink.connects
            figures.counters["messages_published"] = uplink.messages_published
            figures.counters["sightings_published"] = uplink.sightings_published
            figures.counters["batches_confirmed"] = uplink.batches_confirmed
            figures.counters["batches_resent"] = uplink.batches_resent
            figures.counters["confirmations_rejected"] = uplink.confirmations_rejected
            figures.hotlist_rejected = dict(uplink.hotlist_rejected)
            figures.commands_refused = dict(uplink.commands_refused)
            figures.commands_done = dict(uplink.commands_done)
            figures.counters["batch_requests"] = uplink.requests
            figures.counters["batch_requests_rejected"] = uplink.requests_rejected
            figures.counters["batches_requested_held"] = uplink.batches_requested_held
            figures.counters["batches_requested_gone"] = uplink.batches_requested_gone
        if self.gps is not None:
            figures.counters["gps_fixes"] = self.gps.fixes
            figures.counters["gps_port_errors"] = self.gps.port_errors
            figures.counters["sightings_without_fix"] = self.aggregator.sightings_without_fix
            figures.gps_rejected = dict(self.gps.rejected)
        if radio is not None:
            figures.counters["frames_decoded"] = radio.frames
            figures.counters["frames_dropped"] = radio.dropped
            figures.counters["serial_port_errors"] = radio.port_errors
            figures.frames_rejected = dict(radio.rejected)
            if radio.rejected_runs is not None:
                figures.counters["rejected_runs_written"] = radio.rejected_runs.written
                figures.counters["rejected_runs_unsaved"] = radio.rejected_runs.unsaved
        return figures

    def take_now(self) -> None:
        """Take what the receiver has waiting in the caller's turn of the event loop rather than in the consume
        task's next one: the vendor bridge calls it as soon as an upload is taken, so a stolen chip's alert is
        spooled and published in the turn that read the upload. Nothing while the station is not running (its
        consume task takes what waits when it is). A failure here fails the station's run, as one in its own task
        would, and its supervisor restarts it."""
        if not self._taking_now or self.radio is None:
            return
        try:
            self._intake(self.radio.take())
        # Deliberately broad: whatever the intake raises is the station's failure, not the caller's (a connection
        # of the bridge); it ends the station's run below, where its supervisor sees it.
        except Exception as exc:
            self._taking_now = False
            if self._failure is not None and not self._failure.done():
                self._failure.set_exception(exc)

    @staticmethod
    async def _failed(failure: asyncio.Future[None]) -> None:
        """Raise what `take_now` failed with, in the station's own task group."""
        await failure

    async def _consume(self, radio: Receiver) -> None:
        self._taking_now = True
        try:
            while True:
                self._intake(await radio.receive())
        finally:
            self._taking_now = False

    def _intake(self, receptions: list[Reception]) -> None:
        """Frames into the aggregator (alerts spooled and published at once); then what they close or touch to
        the spool."""
        radio = self.radio
        if not receptions or radio is None:
            return
        for reception in receptions:
            self._take(reception, touched=radio.acknowledges)
        # After the whole lot, not inside it: spooling tells the receiver that all it handed over is safe.
        # A sender that sends no more until it is acknowledged (a vendor station) has what it handed over
        # checkpointed now, not at the next batch tick, with the sightings its reads closed (none only in memory).
        if radio.acknowledges or self.aggregator.closed_count >= self.settings.batch_max:
            self._spool_sightings(self.aggregator.take_closed())

    def _take(self, reception: Reception, *, touched: bool) -> None:
        """One frame into the aggregator, and its alerts to the spool."""
        frame = reception.frame
        if isinstance(frame, Beacon):
            tag: TagKey = frame.tag_id
            alerts = self.aggregator.add(frame, reception.received_at)
        elif isinstance(frame, BeaconV2):
            tag = frame.eid
            alerts = self.aggregator.add_v2(frame, reception.received_at)
        else:  # the radio module's status, the one other kind of frame
            self.noise_floor_dbm = frame.noise_floor_dbm
            return
        if touched:
            self._touched.add(tag)
        for alert in alerts:
            self._spool_alert(alert)

    async def _batch_every_interval(self) -> None:
        assert self.spool is not None
        # At a phase of its own: the stations of one process (a fleet, the vendor bridge) started together would
        # otherwise all commit their spools in the same moment of every interval.
        await asyncio.sleep(random.uniform(0, self.settings.batch_interval_s))
        while True:
            await asyncio.sleep(self.settings.batch_interval_s)
            async with self.pace():
                refresh = time.monotonic() - self._checkpoint_refreshed >= self.settings.passage_checkpoint_s
                self.hotlist.drop_past_eids()
                self._spool_sightings(self.aggregator.close_due(), refresh=refresh)
                self.spool.report_drops()

    def _spool_alert(self, alert: Alert) -> None:
        assert self.spool is not None and self.uplink is not None
        self.spool.put_alert(self.alerts_topic, alert.to_json())
        self.uplink.notify()
        self.uplink.send_now()
        # A v2 chip's alert names no tag: the station logs the eid it heard (what any radio hears), bytes 1-8.
        chip = alert.tag_id or f"eid {alert.heard[2:18] if alert.heard else '?'}"
        log.info("station %s: alert %s for tag %s", self.settings.station_id, alert.kind, chip)

    def _spool_sightings(self, sightings: list[Sighting], *, refresh: bool = False) -> None:
        """Spool closed sightings and checkpoint the open passages, in one transaction.

        New passages are checkpointed at once and closed ones forgotten in the transaction that
        spools their sighting, so after a crash every passage is either open in the checkpoint or
        in the outbox, never both and never neither. Counts of passages already checkpointed are
        rewritten only when `refresh` is set (every passage_checkpoint_s): rewriting 500 rows a
        second would wear an SD card for little - unless the receiver acknowledges reads (a vendor
        station forgets what is acknowledged), when each passage heard since is rewritten before the
        receiver is told its reads are spooled.
        """
        assert self.spool is not None
        open_now = self.aggregator.open_passages
        checkpointed = self._checkpointed
        touched = self._touched
        gone = [tag for tag in checkpointed if tag not in open_now]
        changed = [
            p for p in open_now.values() if refresh or p.tag in touched or checkpointed.get(p.tag) != p.first_seen_at
        ]
        if not (sightings or gone or changed):
            if self.radio is not None:
                self.radio.spooled()
            return
        step = self.settings.batch_max
        with self.spool.atomic():
            for start in range(0, len(sightings), step):
                chunk = sightings[start : start + step]

                def build(seq: int, chunk: list[Sighting] = chunk) -> bytes:
                    batch = SightingBatch(
                        station_id=self.settings.station_id, batch_seq=seq, sent_at=self.clock(), sightings=chunk
                    )
                    return batch.to_json()

                self.spool.put_sightings(self.sightings_topic, build, len(chunk))
            self.spool.save_passages(changed, gone)
        touched.clear()
        for tag in gone:
            del checkpointed[tag]
        checkpointed.update((p.tag, p.first_seen_at) for p in changed)
        if refresh:
            self._checkpoint_refreshed = time.monotonic()
        if self.radio is not None:
            self.radio.spooled()
        if sightings and self.uplink is not None:
            self.uplink.notify()


@contextlib.contextmanager
def _metrics_served(stations: Sequence[Station], process: Callable[[], list[Metric]] | None) -> Iterator[None]:
    """Serve /metrics for the stations that ask for it (metrics_port), one endpoint per host and port, each with the
    process's own figures too (`process`)."""
    by_address: dict[tuple[str, int], list[Station]] = {}
    for station in stations:
        if station.settings.metrics_port is not None:
            address = (station.settings.metrics_host, station.settings.metrics_port)
            by_address.setdefault(address, []).append(station)
    servers = [
        metrics.serve(
            [s.figures for s in group],
            host,
            port,
            {s.settings.station_id: s.settings.rejected_runs_file for s in group},
            process,
        )
        for (host, port), group in by_address.items()
    ]
    try:
        yield
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class _SignalStop:
    """SIGTERM/SIGINT cancel the current task, so shutdown takes the normal cancellation path."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handlers (main thread only) for the duration of the block."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            loop.add_signal_handler(sig, self._stop, sig, task)
        try:
            yield
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    def _stop(self, sig: signal.Signals, task: asyncio.Task[object]) -> None:
        log.info("%s: stopping", sig.name)
        self.signal = sig
        task.cancel()


async def run_gateway(settings: GatewaySettings) -> None:
    """Run one station until cancelled or SIGTERM/SIGINT."""
    await run_fleet([settings])


async def run_fleet(settings: Sequence[GatewaySettings]) -> None:
    """Run several stations in one event loop (each its own port, connection and spool)."""
    await Fleet(settings).run()


class Fleet:
    """Several stations in one event loop, each its own port, connection and spool, each supervised: a station
    whose task fails is restarted with backoff, and the others go on meanwhile."""

    def __init__(
        self,
        settings: Sequence[GatewaySettings],
        receivers: Mapping[str, Receiver] | None = None,
        *,
        spool_fsync: bool = True,
        process_metrics: Callable[[], list[Metric]] | None = None,
        pace: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        ids = [s.station_id for s in settings]
        if len(set(ids)) != len(ids):
            raise ValueError(f"station ids must be unique: {ids}")
        spools = [s.spool_file.resolve() for s in settings]
        if len(set(spools)) != len(spools):
            raise ValueError("each station needs a spool file of its own")
        receivers = receivers or {}
        self.stations = [
            Station(s, receiver=receivers.get(s.station_id), spool_fsync=spool_fsync, pace=pace) for s in settings
        ]
        self.process_metrics = process_metrics  # the process's own figures, on the stations' /metrics

    async def run(self) -> None:
        """Run every station until cancelled or SIGTERM/SIGINT."""
        stop = _SignalStop()
        with stop.installed(), _metrics_served(self.stations, self.process_metrics):
            try:
                async with asyncio.TaskGroup() as tasks:
                    for station in self.stations:
                        tasks.create_task(_supervised(station), name=f"station {station.settings.station_id}")
            except asyncio.CancelledError:
                task = asyncio.current_task()
                # A signal is a normal way to stop; a caller's cancellation must still propagate.
                if stop.signal is None or task is None:
                    raise
                task.uncancel()


async def _supervised(station: Station) -> None:
    """Run a station; whenever its task fails, log why and run it again after a backoff (doubling while it keeps
    failing soon after each start, reset once it ran for a while)."""
    s = station.settings
    delay = s.station_restart_min_s
    while True:
        started = time.monotonic()
        try:
            await station.run()
            failure = "its task ended"
        # Deliberately broad, and only here: whatever one station's code raises (a bug, a poisoned input, a disk
        # that went away) must not stop the other stations of the process. Cancellation is not an Exception.
        except Exception as exc:
            log.exception("station %s failed", s.station_id)
            failure = f"{type(exc).__name__}: {exc}"
        station.restarts += 1
        if time.monotonic() - started >= _STABLE_RUN_S:
            delay = s.station_restart_min_s
        log.warning("station %s: restarting in %.1f s (%s)", s.station_id, delay, failure)
        await asyncio.sleep(delay)
        delay = min(delay * 2, s.station_restart_max_s)
