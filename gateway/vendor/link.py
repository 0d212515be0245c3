"""One vendor station as its Station sees it: the reads of its uploads as receptions, the frames it sent that were
refused, and whether it is on the air (logged in, and heard within the heartbeat timeout)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from gateway.radio import Reception
from gateway.rejected_runs import RejectedRunsFile
from gateway.settings import GatewaySettings
from gateway.spool_sync import SpoolSync
from gateway.vendor.devices import VendorDevice
from protocol.frames import Beacon, FrameError, TagFlags
from protocol.mr7901 import STATUS_ALARM, STATUS_LOW_BATTERY, TagRead


def _flags_of(status: int) -> TagFlags:
    flags = TagFlags(0)
    if status & STATUS_ALARM:
        flags |= TagFlags.TAMPER
    if status & STATUS_LOW_BATTERY:
        flags |= TagFlags.LOW_BATTERY
    return flags


# A read's status byte as our tag flags, made once: building the flags per read took as long as the rest of it.
_FLAGS_OF_STATUS = tuple(_flags_of(status) for status in range(256))


def beacon_of(read: TagRead) -> Beacon:
    """The beacon a vendor read stands for: the carried info is the tag's beacon counter."""
    return Beacon(read.tag_id, read.carried_info, _FLAGS_OF_STATUS[read.status], read.rssi_dbm, read.antenna)


class VendorLink:
    """The receiver of one vendor station's Station (gateway.station.Receiver), fed by the bridge's connection
    handler: `take_upload` hands over an upload's reads, `logged_in`/`heard`/`lost` track the connection."""

    def __init__(
        self,
        device: VendorDevice,
        settings: GatewaySettings,
        *,
        heartbeat_timeout_s: float,
        clock_ahead_max_s: float,
        queue_max: int = 50_000,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        spool_sync: SpoolSync | None = None,
    ) -> None:
        """With `spool_sync`, the station's spool commits without an fsync (gateway.spool_sync) and an upload is
        acknowledged only once a pass has synced the spool after its reads were checkpointed."""
        self.device = device
        self.spool_path = settings.spool_file
        self.spool_sync = spool_sync
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.clock_ahead_max = timedelta(seconds=clock_ahead_max_s)
        self.clock = clock
        self.rejected_runs: RejectedRunsFile | None = RejectedRunsFile(
            settings.rejected_runs_file,
            settings.station_id,
            max_bytes=settings.rejected_runs_max_bytes,
            run_max_bytes=settings.rejected_run_max_bytes,
        )
        self.dropped = 0  # always 0: an upload that finds no room is not acknowledged, and the station resends it
        self.port_errors = 0  # connections lost without a goodbye (reset, silence, garbage)
        self.reads = 0
        self.uploads = 0
        self.uploads_repeated = 0  # resends of an upload already taken: acknowledged again, not counted twice
        self.reads_clock_ahead = 0  # reads stamped in the future by the station's clock: taken at the bridge's time
        self._rejected: Counter[str] = Counter()
        self.queue_max = queue_max
        self._uploads: deque[list[Reception]] = deque()  # the reads of the uploads not yet taken, upload by upload
        self._waiting = 0  # reads in them
        self._arrived = asyncio.Event()
        self._connection: object | None = None  # the connection logged in as this device, if any
        self._heard_at = 0.0
        self._last_upload: int | None = None
        self._queued = 0  # reads ever queued
        self._taken = 0  # reads ever taken by the station
        # Acknowledgements waiting for the station's spool: (reads queued up to the upload's last, the future).
        self._acks: deque[tuple[int, asyncio.Future[None]]] = deque()
        self.on_change: Callable[[], None] = lambda: None  # the bridge points this at the station's status_changed
        self.on_upload: Callable[[], None] = lambda: None  # and this at the station's take_now

    @property
    def frames(self) -> int:
        """Frames of this station taken (every kind)."""
        return self.reads

    @property
    def rejected(self) -> Counter[str]:
        """Frames of this station refused, by reason (crc, garbage, bad_length, unknown_command, …)."""
        return self._rejected

    @property
    def rejected_total(self) -> int:
        """All frames of this station refused."""
        return sum(self._rejected.values())

    @property
    def on_air(self) -> bool:
        """Logged in, and heard (a heartbeat or an upload) within the heartbeat timeout."""
        return self._connection is not None and time.monotonic() - self._heard_at < self.heartbeat_timeout_s

    @property
    def room(self) -> int:
        """Reads the station's queue can take now."""
        return self.queue_max - self._waiting

    async def run(self) -> None:
        """Keep the rejected-runs file open until cancelled (the station stops or fails); the bridge's connection
        does the receiving."""
        assert self.rejected_runs is not None
        self.rejected_runs.start()
        try:
            await asyncio.Event().wait()
        finally:
            self._forget_unacknowledged()
            await asyncio.to_thread(self.rejected_runs.close)

    def _forget_unacknowledged(self) -> None:
        """The station's run ended: what it was handed and has not spooled may be gone with it (a failure takes the
        open passages' last reads along). Nothing of it is acknowledged, then: the vendor station sends its upload
        in flight (it has one at a time) again, and that resend is taken afresh, not as a repeat."""
        for _, ack in self._acks:
            ack.cancel()
        self._acks.clear()
        self._uploads.clear()
        self._waiting = 0
        self._queued = self._taken
        self._last_upload = None

    # The station resends what is not acknowledged: reads are acknowledged once spooled (gateway.station.Receiver).
    acknowledges = True

    async def receive(self) -> list[Reception]:
        """The reads of the uploads taken since the last call, in order, each a beacon stamped with its read time in
        UTC: at least one (waits for it). An upload's reads come together, not one by one through a queue."""
        while not self._uploads:
            self._arrived.clear()
            await self._arrived.wait()
        return self.take()

    def take(self) -> list[Reception]:
        """The reads of the uploads taken since the last call, without waiting (perhaps none)."""
        receptions = [reception for upload in self._uploads for reception in upload]
        self._uploads.clear()
        self._waiting = 0
        self._taken += len(receptions)
        return receptions

    def spooled(self) -> None:
        """Every read taken so far is in the spool: settle the acknowledgements of the uploads they were, at once or
        (with a spool sync) once the spool is synced to disk."""
        if not self._acks:
            return  # nothing waits to be acknowledged: no sync needed for it
        if self.spool_sync is None:
            self._settle(self._taken)
        else:
            self.spool_sync.after(self.spool_path, functools.partial(self._settle, self._taken))

    def _settle(self, taken: int) -> None:
        """The first `taken` reads are safe on disk: acknowledge the uploads they were."""
        acks = self._acks
        while acks and acks[0][0] <= taken:
            _, ack = acks.popleft()
            if not ack.done():
                ack.set_result(None)

    def logged_in(self, connection: object) -> object | None:
        """`connection` is now this device's; returns the one it replaces (to be closed), if another."""
        previous, self._connection = self._connection, connection
        self.heard()
        self.on_change()
        return previous if previous is not connection else None

    def is_current(self, connection: object) -> bool:
        """Whether `connection` is the one logged in as this device."""
        return self._connection is connection

    def heard(self) -> None:
        """A valid frame came from the station: it is alive."""
        was = self.on_air
        self._heard_at = time.monotonic()
        if not was:
            self.on_change()

    def lost(self, connection: object, *, clean: bool) -> None:
        """`connection` ended; the station is off the air unless another connection took its place."""
        if self._connection is not connection:
            return
        self._connection = None
        self.port_errors += not clean
        self.on_change()

    def refuse(self, error: FrameError) -> None:
        """Count a frame of this station's connection that was refused, and keep its bytes."""
        self._rejected[error.reason] += 1
        if self.rejected_runs is not None:
            self.rejected_runs.add(error, self.clock())

    def take_upload(self, sequence: int, reads: Sequence[TagRead]) -> asyncio.Future[None] | None:
        """Queue an upload's reads for the station; the future is done once they are safe in the spool (then
        acknowledge it). None when there is no room: do not acknowledge, the station sends it again. An upload
        with the sequence of the one taken last is a resend: acknowledged when the first one is, not taken twice."""
        self.heard()
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if sequence == self._last_upload:
            self.uploads_repeated += 1
            self._acks.append((self._queued, ack))
            return ack
        if len(reads) > self.room:
            return None
        now = self.clock()
        zone = self.device.time_zone
        in_utc: dict[datetime, datetime] = {}  # an upload's reads share a few times: each converted once
        receptions: list[Reception] = []
        for read in reads:
            local = read.read_at_local
            read_at = in_utc.get(local)
            if read_at is None:
                # The station's clock runs in its zone; fold 0 takes the first of an hour that repeats when DST ends.
                read_at = in_utc[local] = local.replace(tzinfo=zone).astimezone(UTC)
            if read_at - now > self.clock_ahead_max:
                self.reads_clock_ahead += 1
                read_at = now
            receptions.append(Reception(read_at, beacon_of(read)))
        if receptions:
            self._uploads.append(receptions)
            self._waiting += len(receptions)
        self._last_upload = sequence
        self._queued += len(reads)
        self._acks.append((self._queued, ack))
        self.uploads += 1
        self.reads += len(reads)
        self.on_upload()  # the station takes the reads in this turn of the loop (and may settle the ack already)
        if self._uploads:
            # Not taken (the station is not running yet): its consume task takes them. Woken only then, not for
            # every upload the station has already taken (a thousand needless task steps a second at 1,000).
            self._arrived.set()
        return ack
