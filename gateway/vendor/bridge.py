"""The vendor bridge: one asyncio TCP server for many MR7901 stations, each feeding the Station of the Bikeguard
station it is registered to.

Each registered device gets a full Station (aggregator, hot-list check, spool, confirmed delivery, status) whose
receiver is a VendorLink instead of a radio module; each connection (an asyncio protocol) decodes what it reads,
answers the station as the protocol requires and hands upload reads to the link, in the turn that reads them. A
device id not in the devices file is refused (register and login answered with result 1) and counted. Refused
frames are counted with their bytes and the connection goes on; a connection that sends nothing valid for
`garbage_max_bytes`, or nothing at all for `heartbeat_timeout_s`, is closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.pacer import Pacer
from gateway.radio import RejectLog
from gateway.settings import GatewaySettings
from gateway.spool_sync import SpoolSync
from gateway.station import Fleet
from gateway.vendor.devices import VendorDevice
from gateway.vendor.link import VendorLink
from protocol import heap
from protocol.frames import FrameError
from protocol.mr7901 import (
    SERVER_IP_SIZE,
    Heartbeat,
    Login,
    Message,
    Mr7901Decoder,
    Register,
    TagUpload,
    encode,
    heartbeat_reply,
    login_reply,
    register_reply,
    tag_upload_reply,
)

log = logging.getLogger(__name__)

RESULT_OK = 0
RESULT_REFUSED = 1  # the device id is not registered to a station of this bridge
# A vendor station's batch tick, unless BIKEGUARD_GATEWAY_BATCH_INTERVAL_S says otherwise. It no longer paces the
# uploads' acknowledgements (those go once their reads are checkpointed), only how often closed passages are sent:
# each batch costs a publish, a PUBACK, a confirmation and three spool commits, which a thousand stations pay each
# interval on one core (docs/benchmarks.md, "Vendor bridge").
BATCH_INTERVAL_S = 3.0
UNKNOWN_DEVICES_KEPT = 1000  # distinct unknown device ids counted by name; the rest together
EARLY_ERRORS_KEPT = 100  # refused frames of a connection not yet logged in, handed to its station at login


def listen_address(text: str) -> tuple[str, int]:
    """host and port of HOST:PORT ([::1]:PORT for IPv6; an empty host is every address); ValueError if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"the listen address must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class BridgeSettings(BaseSettings):
    """The bridge's own settings (`BIKEGUARD_VENDOR_<FIELD>`); each station's other settings are the gateway's
    (`BIKEGUARD_GATEWAY_*`: hot-list key, intervals, spool size, …), the same for every vendor station."""

    model_config = SettingsConfigDict(
        env_prefix="BIKEGUARD_VENDOR_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    listen: str = Field(description="HOST:PORT the vendor stations connect to (their configured server)")
    devices_file: Path = Field(description="TOML: one [[device]] block per station (docs/installer.md)")
    spool_dir: Path = Field(default=Path("."), description="each station's spool and rejected runs go here")
    heartbeat_timeout_s: float = Field(
        default=90.0, gt=0, description="a station heard from for this long is offline and its connection closed"
    )
    garbage_max_bytes: int = Field(
        default=16_384, ge=8192, description="bytes without a valid frame after which a connection is closed"
    )
    clock_ahead_max_s: float = Field(
        default=120.0, ge=0, description="a read stamped further ahead than this is taken at the bridge's time"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        listen_address(value)
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        """host and port of `listen`."""
        return listen_address(self.listen)

    def station_settings(
        self,
        device: VendorDevice,
        overrides: Mapping[str, Any] | None = None,
        *,
        base: GatewaySettings | None = None,
    ) -> GatewaySettings:
        """The settings of the Station a device feeds: BIKEGUARD_GATEWAY_* ones, then `overrides`, then the
        device's own (station id, broker URL, spool); the batch interval is BATCH_INTERVAL_S unless one of the
        first two sets it. With `base` (another station's), its settings stand for the first two and the
        environment is not read again."""
        own = {
            "station_id": device.station_id,
            "serial_url": f"mr7901://{device.device_id}",
            "mqtt_url": device.mqtt_url,
            "spool_path": self.spool_dir / f"gateway-{device.station_id}.spool",
        }
        if base is not None:
            return GatewaySettings.model_validate({**base.model_dump(), **(overrides or {}), **own})
        settings = GatewaySettings(**{**(overrides or {}), **own})
        if "batch_interval_s" in settings.model_fields_set:
            return settings
        return GatewaySettings.model_validate({**settings.model_dump(), "batch_interval_s": BATCH_INTERVAL_S})


class _Connection(asyncio.Protocol):
    """One TCP connection: its decoder, and the device it logged in as.

    A protocol of the bridge's own, not a stream: what a read brings is decoded and answered, and an upload's reads
    handed to its station (a stolen chip's alert published), in the turn of the event loop that reads it. A stream's
    handler woke a turn later, which at 1,000 stations cost an alert up to 50 ms (docs/benchmarks.md, "Vendor
    bridge")."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.decoder = Mr7901Decoder()
        # Unbounded while one read is decoded, so every refused frame reaches its count and file; emptied after.
        self.decoder.recent_errors = deque()
        self.link: VendorLink | None = None
        self.valid_at = time.monotonic()
        self.bytes_since_valid = 0
        self.early_errors: list[FrameError] = []
        self.silent = False  # closed by the bridge for sending nothing valid for the heartbeat timeout
        self.clean = False  # the station closed it itself
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.bridge._opened(self)

    def data_received(self, data: bytes) -> None:
        self.bridge._received(self, data)

    def eof_received(self) -> bool:
        self.clean = not self.silent
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge._closed(self, exc)
        if not self.ended.done():
            self.ended.set_result(None)

    def pause_writing(self) -> None:
        """The station does not read its replies: it is not read either until it does (as a stream's drain)."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Write to the station, unless the connection is closing."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        """Close the connection once what is written has gone."""
        if self.transport is not None:
            self.transport.close()


class Bridge:
    """`await run()`: serve the vendor stations of `devices` until cancelled or SIGTERM/SIGINT."""

    def __init__(
        self,
        settings: BridgeSettings,
        devices: Sequence[VendorDevice],
        station_overrides: Mapping[str, Any] | None = None,
        *,
        settle_heap_s: float | None = None,
    ) -> None:
        """`settle_heap_s`: freeze the process's heap that long after start, then collect it on a schedule
        (protocol.heap.settle); the bridge's own process does, one in a test or the demo need not."""
        self.settings = settings
        self.settle_heap_s = settle_heap_s
        # The stations' spools are synced to disk together, off the event loop (gateway.spool_sync): an fsync'd
        # commit per station and tick, on the loop, stalled every station's uploads and alerts.
        self.spool_sync = SpoolSync()
        # The environment is read once: reading it for each of a thousand stations took half a minute.
        first = [settings.station_settings(d, station_overrides) for d in devices[:1]]
        station_settings = first + [settings.station_settings(d, base=first[0]) for d in devices[1:]]
        self.links = {
            d.device_id: VendorLink(
                d,
                s,
                heartbeat_timeout_s=settings.heartbeat_timeout_s,
                clock_ahead_max_s=settings.clock_ahead_max_s,
                spool_sync=self.spool_sync,
            )
            for d, s in zip(devices, station_settings, strict=True)
        }
        by_station = {link.device.station_id: link for link in self.links.values()}
        # The stations' batch ticks, drains and confirmations take a slice of each turn of the loop, after which the
        # turn reads what the connections brought: bursts of them held a stolen chip's upload for up to 130 ms.
        self.pacer = Pacer()
        self.fleet = Fleet(
            station_settings,
            receivers=by_station,
            spool_fsync=False,
            process_metrics=self.metric_families,
            pace=self.pacer.slot,
        )
        for station in self.fleet.stations:
            link = by_station[station.settings.station_id]
            link.on_change = station.status_changed
            link.on_upload = station.take_now
        self.ready = asyncio.Event()
        self.port: int | None = None  # the port listened on (known once ready)
        self.connections = 0
        self.unknown_devices: Counter[str] = Counter()  # refused register/login by device id
        self.garbage_disconnects = 0
        self.silent_disconnects = 0
        self.unidentified_rejected: Counter[str] = Counter()  # refused frames of connections never logged in
        self._reject_log = RejectLog("vendor bridge")
        self._open: set[_Connection] = set()
        self.gc_time = heap.CollectorTime()  # counting while the bridge runs

    async def run(self) -> None:
        """Listen and run every station until cancelled."""
        host, port = self.settings.listen_address
        server = await asyncio.get_running_loop().create_server(lambda: _Connection(self), host, port)
        self.port = server.sockets[0].getsockname()[1]
        log.info("vendor bridge: listening on %s:%d for %d stations", host, self.port, len(self.links))
        self.ready.set()
        background = [
            asyncio.create_task(self.spool_sync.run(), name="spool sync"),
            asyncio.create_task(self._close_silent(), name="silent connections"),
        ]
        if self.settle_heap_s is not None:
            background.append(asyncio.create_task(heap.settle(self.settle_heap_s), name="heap settle"))
        try:
            with self.gc_time:
                await self.fleet.run()
        finally:
            for task in background:
                task.cancel()
            server.close()
            await self._close_all()
            await asyncio.gather(*background, return_exceptions=True)
            await server.wait_closed()
            self.ready.clear()

    async def _close_all(self, flush_s: float = 2.0) -> None:
        """Close every connection, letting what is written go for up to `flush_s`; then drop what still waits (a
        station that does not read: what it was not told is acknowledged, it sends again)."""
        open_now = list(self._open)
        for conn in open_now:
            conn.close()
        if not open_now:
            return
        _, late = await asyncio.wait([c.ended for c in open_now], timeout=flush_s)
        for conn in open_now:
            if not conn.ended.done() and conn.transport is not None:
                conn.transport.abort()
        if late:
            await asyncio.wait(late, timeout=flush_s)

    def _opened(self, conn: _Connection) -> None:
        self.connections += 1
        self._open.add(conn)

    def _received(self, conn: _Connection, data: bytes) -> None:
        """Answer what a read of `conn` brought, in this turn of the loop; close the connection if it is refused,
        sends garbage for long, or its handling fails."""
        try:
            replies = self._answer_all(conn, data)
        # Deliberately broad, and only here: whatever one connection's handling raises (a bug, a poisoned frame)
        # ends that connection, never the bridge and its other stations. Cancellation is not an Exception.
        except Exception:
            log.exception("vendor connection %s (%s) failed: closed", conn.peer, self._who(conn))
            conn.close()
            return
        if replies is None:
            conn.close()  # refused: the answer (if any) is written, and goes before the connection closes
            return
        if replies:
            conn.write(replies)
        if conn.bytes_since_valid > self.settings.garbage_max_bytes:
            self.garbage_disconnects += 1
            log.warning(
                "vendor connection %s (%s): %d bytes without a valid frame: closed",
                conn.peer,
                self._who(conn),
                conn.bytes_since_valid,
            )
            conn.close()

    def _closed(self, conn: _Connection, exc: Exception | None) -> None:
        if exc is not None:
            log.info("vendor connection %s: %s", conn.peer, exc)
        self._open.discard(conn)
        if conn.link is not None:
            conn.link.lost(conn, clean=conn.clean)

    async def _close_silent(self) -> None:
        """Close every connection that sent nothing valid for the heartbeat timeout: one task for them all, checking
        ten times a timeout, rather than a timeout scope (a timer set and cancelled) on every read of every socket."""
        timeout_s = self.settings.heartbeat_timeout_s
        while True:
            await asyncio.sleep(min(max(timeout_s / 10, 0.05), 5.0))
            now = time.monotonic()
            for conn in [c for c in self._open if now - c.valid_at >= timeout_s and not c.silent]:
                conn.silent = True
                self.silent_disconnects += 1
                log.warning(
                    "vendor connection %s (%s): nothing valid for %.0f s: closed", conn.peer, self._who(conn), timeout_s
                )
                conn.close()

    def _answer_all(self, conn: _Connection, data: bytes) -> bytes | None:
        """Answer the messages in `data`: the replies to write now; None when the connection is to be closed.

        Nothing of an upload outlives this call: a message kept until the connection's next read (a second) lived
        long enough to reach the garbage collector's oldest generation, where at 1,000 stations some 40,000 reads
        waited to be freed and every full collection walked them."""
        conn.bytes_since_valid += len(data)
        replies: list[Message] = []
        for message in conn.decoder.feed(data):
            reply = self._answer(conn, message)
            if reply is None:
                return None
            replies += reply
        self._take_rejections(conn)
        return b"".join(encode(r) for r in replies)

    def metric_families(self) -> list[Metric]:
        """The bridge's own figures for its stations' /metrics (on the event loop, at scrape time)."""
        prefix = "bikeguard_gateway_vendor"
        connections = CounterMetricFamily(f"{prefix}_connections", "TCP connections vendor stations opened")
        connections.add_metric([], self.connections)
        open_now = GaugeMetricFamily(f"{prefix}_connections_open", "TCP connections of vendor stations open now")
        open_now.add_metric([], len(self._open))
        unknown = CounterMetricFamily(
            f"{prefix}_unknown_devices",
            "Register and login refused because the device id is registered to no station of this bridge",
            labels=["device"],
        )
        for device_id, n in sorted(self.unknown_devices.items()):
            unknown.add_metric([device_id], n)
        closed = CounterMetricFamily(
            f"{prefix}_disconnects", "Connections the bridge closed, by reason", labels=["reason"]
        )
        closed.add_metric(["garbage"], self.garbage_disconnects)
        closed.add_metric(["silent"], self.silent_disconnects)
        unidentified = CounterMetricFamily(
            f"{prefix}_unidentified_rejected",
            "Frames refused on connections that never logged in, by reason",
            labels=["reason"],
        )
        for reason, n in sorted(self.unidentified_rejected.items()):
            unidentified.add_metric([reason], n)
        sync = self.spool_sync
        passes = CounterMetricFamily(
            "bikeguard_gateway_spool_sync_passes", "Passes that synced the stations' spools to disk together"
        )
        passes.add_metric([], sync.passes)
        files = CounterMetricFamily("bikeguard_gateway_spool_sync_files", "Spools synced to disk, over all passes")
        files.add_metric([], sync.files_synced)
        errors = CounterMetricFamily(
            "bikeguard_gateway_spool_sync_errors", "Spools that could not be synced (their uploads left unacknowledged)"
        )
        errors.add_metric([], sync.errors)
        last = GaugeMetricFamily("bikeguard_gateway_spool_sync_last_pass_seconds", "How long the last pass took")
        last.add_metric([], sync.last_pass_s)
        gc_seconds = CounterMetricFamily(
            "bikeguard_gateway_gc_seconds",
            "Time the process's cyclic garbage collector ran while the bridge did, by generation (2: full)",
            labels=["generation"],
        )
        for generation, seconds in enumerate(self.gc_time.seconds):
            gc_seconds.add_metric([str(generation)], seconds)
        return [
            connections,
            open_now,
            unknown,
            closed,
            unidentified,
            passes,
            files,
            errors,
            last,
            gc_seconds,
            *self._background_families(),
        ]

    def _background_families(self) -> list[Metric]:
        """The stations' background work (batch ticks, drains, confirmations) as the pacer let it run: a wait that
        grows says the bridge's core is short."""
        pacer = self.pacer
        prefix = "bikeguard_gateway_vendor_background"
        jobs = CounterMetricFamily(f"{prefix}_jobs", "Stations' background jobs run (batch ticks, drains, messages)")
        jobs.add_metric([], pacer.jobs)
        waited = CounterMetricFamily(
            f"{prefix}_wait_seconds", "Time background jobs waited for their slice of the event loop, in all"
        )
        waited.add_metric([], pacer.waited_s)
        waiting = GaugeMetricFamily(f"{prefix}_waiting", "Background jobs waiting for a slice of the event loop now")
        waiting.add_metric([], pacer.waiting)
        return [jobs, waited, waiting]

    def _who(self, conn: _Connection) -> str:
        return "not logged in" if conn.link is None else f"device {conn.link.device.device_id!r}"

    def _answer(self, conn: _Connection, message: Message) -> list[Message] | None:
        """The replies to one message; None when the connection is to be closed."""
        if isinstance(message, (Register, Login)):
            return self._log_in(conn, message)
        link = conn.link
        if link is None:
            log.warning("vendor connection %s: %s before logging in: closed", conn.peer, type(message).__name__)
            self.unidentified_rejected["not_logged_in"] += 1
            return None
        if message.device_id != link.device.device_id:
            link.refuse(
                DeviceMismatchError(
                    f"device id {message.device_id!r} on the connection of {link.device.device_id!r}", encode(message)
                )
            )
            return []
        self._valid(conn)
        if isinstance(message, Heartbeat):
            link.heard()
            return [heartbeat_reply(message)]
        if isinstance(message, TagUpload):
            ack = link.take_upload(message.sequence, message.reads)
            if ack is not None:
                # The reply goes once the reads are in the spool: the station forgets what is acknowledged.
                ack.add_done_callback(functools.partial(_send_reply, conn, encode(tag_upload_reply(message))))
                return []
            log.warning(
                "station %s: no room for %d reads: upload %d left unacknowledged for a resend",
                link.device.station_id,
                len(message.reads),
                message.sequence,
            )
            return []
        link.refuse(UnexpectedMessageError(f"a station does not send {type(message).__name__}", encode(message)))
        return []

    def _log_in(self, conn: _Connection, message: Register | Login) -> list[Message] | None:
        link = self.links.get(message.device_id)
        if link is None:
            self._count_unknown(message.device_id)
            log.warning(
                "vendor device %r from %s is not registered to a station of this bridge: refused (register it on "
                "the installer page and add its [[device]] block to %s)",
                message.device_id,
                conn.peer,
                self.settings.devices_file,
            )
            host, port = self._address_of(conn)
            refusal = (
                register_reply(message, RESULT_REFUSED, datetime.now(UTC), host, port)
                if isinstance(message, Register)
                else login_reply(message, RESULT_REFUSED)
            )
            conn.write(encode(refusal))
            return None
        if conn.link is not None and conn.link is not link:
            link.refuse(
                DeviceMismatchError(
                    f"device {message.device_id!r} logging in on the connection of {conn.link.device.device_id!r}",
                    encode(message),
                )
            )
            return []
        self._valid(conn)
        if isinstance(message, Register):
            host, port = self._address_of(conn)
            now = datetime.now(UTC).astimezone(link.device.time_zone)
            return [register_reply(message, RESULT_OK, now, host, port)]
        if conn.link is None:
            conn.link = link
            for error in conn.early_errors:
                link.refuse(error)
            conn.early_errors.clear()
        replaced = link.logged_in(conn)
        if isinstance(replaced, _Connection):
            log.info(
                "station %s: logged in again from %s; closing its connection from %s",
                link.device.station_id,
                conn.peer,
                replaced.peer,
            )
            replaced.close()
        log.info("station %s: vendor device %r logged in from %s", link.device.station_id, message.device_id, conn.peer)
        return [login_reply(message, RESULT_OK)]

    def _address_of(self, conn: _Connection) -> tuple[str, int]:
        """Where the station reached us: what a register reply tells it to connect to."""
        local = conn.transport.get_extra_info("sockname") if conn.transport is not None else None
        host, port = (str(local[0]), int(local[1])) if isinstance(local, tuple) else ("", 0)
        # An IPv6 address may not fit the reply's 32 characters: then the one we were told to listen on.
        return (host if 0 < len(host) <= SERVER_IP_SIZE else self.settings.listen_address[0]), port

    def _valid(self, conn: _Connection) -> None:
        conn.valid_at = time.monotonic()
        conn.bytes_since_valid = conn.decoder.pending

    def _take_rejections(self, conn: _Connection) -> None:
        errors = conn.decoder.recent_errors
        while errors:
            error = errors.popleft()
            self._reject_log(error)
            if conn.link is not None:
                conn.link.refuse(error)
            else:
                self.unidentified_rejected[error.reason] += 1
                if len(conn.early_errors) < EARLY_ERRORS_KEPT:
                    conn.early_errors.append(error)

    def _count_unknown(self, device_id: str) -> None:
        if device_id in self.unknown_devices or len(self.unknown_devices) < UNKNOWN_DEVICES_KEPT:
            self.unknown_devices[device_id] += 1
        else:
            self.unknown_devices["(others)"] += 1


def _send_reply(conn: _Connection, reply: bytes, ack: asyncio.Future[None]) -> None:
    """Write a reply whose time came, unless the station forgot the upload (its run ended first: the reply is never
    sent, and the vendor station sends the upload again) or the connection has ended meanwhile."""
    if not ack.cancelled():
        conn.write(reply)


class DeviceMismatchError(FrameError):
    """A valid frame that names another device than the one its connection logged in as."""

    reason = "device_mismatch"


class UnexpectedMessageError(FrameError):
    """A valid frame of a kind only the server sends (a reply)."""

    reason = "unexpected"
