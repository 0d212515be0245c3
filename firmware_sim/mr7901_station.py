"""A simulated MR7901 vendor base station: speaks the vendor's protocol to a server over real TCP.

It does what the vendor's station does: connects, registers, logs in (retrying after a refusal),
sends heartbeats, and uploads the tags it hears in batches, resending an upload whose reply does
not come (same sequence), and reconnecting after a dropped connection. Every frame goes out split
at random points over several writes, sometimes two frames in one write, because TCP is a stream
and the server must not care. The beacons come from the town through `hear`, exactly as a
`RadioModule` gets them; see hardware/mr7901.md, "The simulated station".
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from itertools import accumulate, pairwise
from zoneinfo import ZoneInfo

from protocol.frames import Beacon, TagFlags
from protocol.mr7901 import (
    MAX_DATA,
    STATUS_ALARM,
    STATUS_LOW_BATTERY,
    Heartbeat,
    Login,
    LoginReply,
    Message,
    Mr7901Decoder,
    Register,
    RegisterReply,
    Request,
    TagRead,
    TagUpload,
    TagUploadReply,
    encode,
)

log = logging.getLogger(__name__)

TAG_TYPE = 0x02  # the vendor's code for its standard e-bike chip, as in the spec's worked example
READ_SIZE = 17
MAX_READS_PER_UPLOAD = (MAX_DATA - 4) // READ_SIZE  # one TLV header, then 17 bytes per read: 240


class StationLinkError(ConnectionError):
    """The connection to the server is no longer usable (closed, silent, or refusing to register)."""


@dataclass(slots=True)
class VendorStationStats:
    """What the station did; `reads_dropped` counts reads lost to a full buffer, never silently."""

    connections: int = 0
    registrations: int = 0
    logins: int = 0
    logins_refused: int = 0
    heartbeats_sent: int = 0
    uploads_sent: int = 0
    uploads_resent: int = 0
    uploads_acked: int = 0
    reads_uploaded: int = 0
    reads_dropped: int = 0
    frames_sent: int = 0
    writes: int = 0
    frames_joined: int = 0  # writes that carried the end of one frame and the start of the next


def tag_read(beacon: Beacon, heard_at: datetime, time_zone: tzinfo) -> TagRead:
    """The vendor's read of one beacon: station local time, tamper as alarm, the beacon counter as carried info."""
    status = (STATUS_ALARM if beacon.flags & TagFlags.TAMPER else 0) | (
        STATUS_LOW_BATTERY if beacon.flags & TagFlags.LOW_BATTERY else 0
    )
    check = 0
    for byte in beacon.tag_id.to_bytes(4, "big"):
        check ^= byte
    local = heard_at.astimezone(time_zone).replace(tzinfo=None, microsecond=0)
    return TagRead(beacon.antenna, TAG_TYPE, beacon.tag_id, check, beacon.counter, status, beacon.rssi_dbm, local)


def plan_writes(frames: list[bytes], rng: random.Random, *, join_rate: float = 0.3, max_pieces: int = 4) -> list[bytes]:
    """Cut frames into the pieces written one by one: each frame (or two joined) split at random points."""
    units: list[bytes] = []
    i = 0
    while i < len(frames):
        if i + 1 < len(frames) and rng.random() < join_rate:
            units.append(frames[i] + frames[i + 1])
            i += 2
        else:
            units.append(frames[i])
            i += 1
    pieces: list[bytes] = []
    for unit in units:
        cuts = sorted(rng.sample(range(1, len(unit)), min(len(unit) - 1, rng.randint(0, max_pieces - 1))))
        pieces += [unit[a:b] for a, b in pairwise([0, *cuts, len(unit)])]
    return pieces


class VendorStation:
    """One MR7901 station that connects to `host:port` and reports the beacons handed to `hear`.

    `run` keeps the station connected until cancelled. `hear` may be called from any thread (the
    town's runner thread calls it), so the simulation and the station need not share an event loop.
    """

    def __init__(
        self,
        host: str,
        port: int,
        device_id: str,
        *,
        time_zone: tzinfo | str = "Asia/Shanghai",
        heartbeat_interval_s: float = 30.0,
        upload_interval_s: float = 1.0,
        reply_timeout_s: float = 5.0,
        retry_s: float = 2.0,
        retry_max_s: float = 60.0,
        max_pending_reads: int = 20_000,
        join_rate: float = 0.3,
        max_pieces: int = 4,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        encode(Heartbeat(device_id, 0))  # a device id the wire cannot carry fails here, not in run()
        self.host = host
        self.port = port
        self.device_id = device_id
        self.time_zone = ZoneInfo(time_zone) if isinstance(time_zone, str) else time_zone
        self.heartbeat_interval_s = heartbeat_interval_s
        self.upload_interval_s = upload_interval_s
        self.reply_timeout_s = reply_timeout_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.join_rate = join_rate
        self.max_pieces = max_pieces
        self.stats = VendorStationStats()
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._heard: deque[TagRead] = deque()
        self._max_pending = max_pending_reads
        self._sequence = 0
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        # The upload sent but not yet acknowledged; it survives a reconnect and is resent as it was.
        self._unacked: TagUpload | None = None

    def hear(self, beacon: Beacon, heard_at: datetime | None = None) -> bool:
        """Take a beacon the station's antenna heard (now, or at `heard_at`); False if the buffer was full."""
        read = tag_read(beacon, heard_at or self._clock(), self.time_zone)
        with self._lock:
            dropped = len(self._heard) >= self._max_pending
            if dropped:
                self._heard.popleft()  # keep the newest reads: the oldest matter least to a live map
                self.stats.reads_dropped += 1
            self._heard.append(read)
        return not dropped

    @property
    def pending_reads(self) -> int:
        """Reads heard and not yet in an upload."""
        with self._lock:
            return len(self._heard)

    async def run(self) -> None:
        """Stay connected to the server, reconnecting after every failure, until cancelled."""
        delay = self.retry_s
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                log.warning("station %s: cannot connect to %s:%d: %s", self.device_id, self.host, self.port, exc)
            else:
                self.stats.connections += 1
                logins = self.stats.logins
                try:
                    await self._session(reader, writer)
                except ConnectionError as exc:
                    log.warning("station %s: connection lost: %s; reconnecting", self.device_id, exc)
                finally:
                    await self._close(writer)
                if self.stats.logins > logins:
                    delay = self.retry_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
        writer.close()
        try:
            await writer.wait_closed()
        except OSError as exc:  # the peer may have reset the connection already
            log.debug("station %s: closing: %s", self.device_id, exc)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        read_task = asyncio.create_task(self._read_replies(reader))
        talk_task = asyncio.create_task(self._converse(writer))
        try:
            done, _ = await asyncio.wait({read_task, talk_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (read_task, talk_task):
                task.cancel()
            await asyncio.gather(read_task, talk_task, return_exceptions=True)
        for task in done:
            task.result()

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        decoder = Mr7901Decoder()
        while True:
            data = await reader.read(4096)
            if not data:
                raise StationLinkError("the server closed the connection")
            for message in decoder.feed(data):
                future = self._waiting.pop(message.sequence, None)
                if future is None or future.done():
                    # The server answered both an upload and its resend: the second reply is expected.
                    log.debug("station %s: reply %r matches no waiting request", self.device_id, message)
                else:
                    future.set_result(message)
            if decoder.rejected:
                log.warning("station %s: bad frames from the server: %s", self.device_id, dict(decoder.rejected))
                decoder.rejected.clear()

    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        return self._sequence

    def _expect(self, request: Request) -> asyncio.Future[Message]:
        future = self._waiting.get(request.sequence)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._waiting[request.sequence] = future
        return future

    async def _write(self, writer: asyncio.StreamWriter, requests: list[Request]) -> None:
        frames = [encode(r) for r in requests]
        pieces = plan_writes(frames, self._rng, join_rate=self.join_rate, max_pieces=self.max_pieces)
        ends = set(accumulate(len(f) for f in frames))
        at = 0
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if any(at < end < at + len(piece) for end in ends):
                self.stats.frames_joined += 1
            at += len(piece)
        self.stats.writes += len(pieces)
        self.stats.frames_sent += len(frames)

    async def _ask(self, writer: asyncio.StreamWriter, request: Request) -> Message:
        future = self._expect(request)
        await self._write(writer, [request])
        try:
            return await asyncio.wait_for(future, self.reply_timeout_s)
        except TimeoutError:
            raise StationLinkError(f"no reply to {type(request).__name__} {request.sequence}") from None

    async def _log_in(self, writer: asyncio.StreamWriter) -> None:
        reply = await self._ask(writer, Register(self.device_id, self._next_sequence()))
        if not isinstance(reply, RegisterReply) or reply.result != 0:
            raise StationLinkError(f"register refused: {reply!r}")
        self.stats.registrations += 1
        # A real station may move to the address in the reply; ours stays where it was pointed.
        log.info("station %s: registered; server says %s:%d", self.device_id, reply.server_ip, reply.port)
        delay = self.retry_s
        while True:
            reply = await self._ask(writer, Login(self.device_id, self._next_sequence()))
            if isinstance(reply, LoginReply) and reply.result == 0:
                self.stats.logins += 1
                log.info("station %s: logged in to %s:%d", self.device_id, self.host, self.port)
                return
            self.stats.logins_refused += 1
            log.warning("station %s: login refused (%r); retrying in %.1f s", self.device_id, reply, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)

    def _take_upload(self) -> TagUpload | None:
        with self._lock:
            if not self._heard:
                return None
            count = min(len(self._heard), MAX_READS_PER_UPLOAD)
            reads = tuple(self._heard.popleft() for _ in range(count))
        return TagUpload(self.device_id, self._next_sequence(), reads)

    async def _converse(self, writer: asyncio.StreamWriter) -> None:
        """Log in, then every tick send what is due: a heartbeat, a new upload, or an upload to resend."""
        await self._log_in(writer)
        loop = asyncio.get_running_loop()
        tick_s = max(0.005, min(self.upload_interval_s, self.heartbeat_interval_s, self.reply_timeout_s) / 4)
        # Ticks and uploads at phases of the station's own, as its clock has them: stations simulated together, or
        # logged in by one reply of a busy server, do not tick or upload in step (docs/benchmarks.md, "Vendor bridge").
        start = loop.time()
        timers = _Timers(start, next_upload_at=start + self._rng.uniform(0, self.upload_interval_s))
        tick_at = start + self._rng.uniform(0, tick_s)
        await asyncio.sleep(tick_at - start)
        while True:
            now = loop.time()
            due = self._heartbeat_due(now, timers) + self._upload_due(now, timers)
            if due:
                await self._write(writer, due)
            # A tick that came late (a busy simulator) does not move the next ones.
            tick_at += tick_s * max(1, int((loop.time() - tick_at) // tick_s) + 1)
            await asyncio.sleep(tick_at - loop.time())

    def _heartbeat_due(self, now: float, timers: _Timers) -> list[Request]:
        if timers.heartbeat is not None and not timers.heartbeat.done() and now >= timers.heartbeat_deadline:
            # A station cannot tell a silent server from a dead link: it reconnects.
            raise StationLinkError(f"no heartbeat reply within {self.reply_timeout_s} s")
        if now < timers.next_heartbeat_at:
            return []
        request = Heartbeat(self.device_id, self._next_sequence())
        timers.heartbeat, timers.heartbeat_deadline = self._expect(request), now + self.reply_timeout_s
        timers.next_heartbeat_at += self.heartbeat_interval_s
        self.stats.heartbeats_sent += 1
        return [request]

    def _upload_due(self, now: float, timers: _Timers) -> list[Request]:
        upload = self._unacked
        if upload is not None and timers.upload is not None and timers.upload.done():
            if isinstance(timers.upload.result(), TagUploadReply):
                self.stats.uploads_acked += 1
                self.stats.reads_uploaded += len(upload.reads)
                self._unacked = upload = None
            timers.upload = None
        if upload is not None:
            if now < timers.upload_deadline:
                return []
            # Unanswered in time, or left over from the last connection: the same frame, the same sequence.
            self.stats.uploads_resent += 1
        elif now >= timers.next_upload_at:
            timers.next_upload_at = max(timers.next_upload_at + self.upload_interval_s, now)
            upload = self._unacked = self._take_upload()
            if upload is None:
                return []
            self.stats.uploads_sent += 1
        else:
            return []
        timers.upload, timers.upload_deadline = self._expect(upload), now + self.reply_timeout_s
        return [upload]


class VendorFleet:
    """Vendor stations on an event loop of their own, on one thread, so a threaded town runner can feed them."""

    def __init__(self, stations: Sequence[VendorStation]) -> None:
        self.stations = list(stations)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        """Start the stations' thread; they connect, and reconnect, on their own."""
        if self._thread is None:
            self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="mr7901-fleet", daemon=True)
            self._thread.start()
            self._ready.wait(5.0)

    def stop(self) -> None:
        """Close every station's connection and end the thread."""
        if self._loop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    async def _serve(self) -> None:
        self._loop, self._done = asyncio.get_running_loop(), asyncio.Event()
        tasks = [asyncio.create_task(station.run()) for station in self.stations]
        self._ready.set()
        await self._done.wait()
        for task in tasks:
            task.cancel()
        for station, result in zip(self.stations, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
            if isinstance(result, Exception):
                log.error("station %s failed: %r", station.device_id, result)


@dataclass(slots=True)
class _Timers:
    """When a connection's next heartbeat and upload are due, and the replies it waits for."""

    next_heartbeat_at: float
    next_upload_at: float = 0.0
    heartbeat: asyncio.Future[Message] | None = None
    heartbeat_deadline: float = 0.0
    upload: asyncio.Future[Message] | None = None
    upload_deadline: float = 0.0
