"""firmware_sim.mr7901_station: a simulated vendor station against a real TCP server that speaks MR7901."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from firmware_sim.mr7901_station import VendorStation, plan_writes, tag_read
from firmware_sim.runner import SimRunner, vendor_device_ids, vendor_stations
from firmware_sim.town import Town, TownError
from protocol.frames import Beacon, TagFlags
from protocol.mr7901 import (
    STATUS_ALARM,
    STATUS_LOW_BATTERY,
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

NO_FLAGS = TagFlags(0)
WAIT_S = 10.0  # generous: the machine is shared; every wait returns as soon as the event happens

pytestmark = pytest.mark.anyio


@dataclass
class VendorServer:
    """A minimal MR7901 server: decodes what stations send and answers with the codec's reply helpers."""

    refuse_logins: int = 0
    withhold_upload_replies: int = 0
    close_after_uploads: int | None = None
    received: asyncio.Queue[tuple[int, Message]] = field(default_factory=asyncio.Queue)
    decoders: list[Mr7901Decoder] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one station connection until it closes (or the test closes it)."""
        decoder = Mr7901Decoder()
        self.decoders.append(decoder)
        connection = len(self.decoders)
        uploads = 0
        try:
            while data := await reader.read(4096):
                for message in decoder.feed(data):
                    await self.received.put((connection, message))
                    reply = self._reply(message)
                    if isinstance(message, TagUpload):
                        uploads += 1
                    if reply is not None:
                        writer.write(encode(reply))
                        await writer.drain()
                    if self.close_after_uploads is not None and uploads >= self.close_after_uploads:
                        self.close_after_uploads = None
                        return
        finally:
            writer.close()

    def _reply(self, message: Message) -> Message | None:
        if isinstance(message, Register):
            return register_reply(message, 0, datetime(2026, 11, 29, 18, 0, 0), "127.0.0.1", self.port)
        if isinstance(message, Login):
            refuse = self.refuse_logins > 0
            self.refuse_logins -= refuse
            return login_reply(message, 1 if refuse else 0)
        if isinstance(message, Heartbeat):
            return heartbeat_reply(message)
        if isinstance(message, TagUpload):
            if self.withhold_upload_replies > 0:
                self.withhold_upload_replies -= 1
                return None
            return tag_upload_reply(message)
        return None

    async def next(self, kind: type[Message]) -> tuple[int, Message]:
        """The next message of this kind (with its connection number), skipping others."""

        async def wait() -> tuple[int, Message]:
            while True:
                connection, message = await self.received.get()
                if isinstance(message, kind):
                    return connection, message

        return await asyncio.wait_for(wait(), WAIT_S)

    async def next_upload(self) -> tuple[int, TagUpload]:
        """The next tag upload."""
        connection, message = await self.next(TagUpload)
        assert isinstance(message, TagUpload)
        return connection, message

    @property
    def rejected(self) -> dict[str, int]:
        """Rejections of every connection's decoder, summed."""
        total: dict[str, int] = {}
        for decoder in self.decoders:
            for reason, n in decoder.rejected.items():
                total[reason] = total.get(reason, 0) + n
        return total


@asynccontextmanager
async def serving(server: VendorServer) -> AsyncIterator[VendorServer]:
    """Run the server on 127.0.0.1 on a free port."""
    tcp = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = tcp.sockets[0].getsockname()[1]
    async with tcp:
        yield server


@asynccontextmanager
async def running(station: VendorStation) -> AsyncIterator[VendorStation]:
    """Run the station until the block ends."""
    task = asyncio.create_task(station.run())
    try:
        yield station
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def station_for(server: VendorServer, *, seed: int = 1, **kwargs: float) -> VendorStation:
    """A station with short intervals pointed at the test server."""
    settings: dict[str, float] = {
        "heartbeat_interval_s": 0.2,
        "upload_interval_s": 0.05,
        "reply_timeout_s": 0.5,
        "retry_s": 0.05,
        **kwargs,
    }
    return VendorStation(
        "127.0.0.1", server.port, "MR7901-000123", time_zone="Asia/Shanghai", rng=random.Random(seed), **settings
    )


def beacon(tag_id: int, flags: TagFlags = NO_FLAGS, *, rssi_dbm: int = -60, antenna: int = 1) -> Beacon:
    """A beacon as the town's stations hear it."""
    return Beacon(tag_id, 7, flags, rssi_dbm, antenna)


async def test_station_registers_logs_in_heartbeats_and_uploads_reads_in_its_local_time() -> None:
    async with serving(VendorServer()) as server, running(station_for(server)) as station:
        _, register = await server.next(Register)
        _, login = await server.next(Login)
        assert register.device_id == login.device_id == "MR7901-000123"
        assert login.sequence > register.sequence
        await server.next(Heartbeat)
        await server.next(Heartbeat)
        station.hear(beacon(0x12345678), datetime(2026, 11, 29, 10, 9, 58, 250_000, tzinfo=UTC))
        station.hear(
            beacon(0x0A0B0C0D, TagFlags.TAMPER, rssi_dbm=-81, antenna=0), datetime(2026, 11, 29, 16, 0, 1, tzinfo=UTC)
        )
        _, upload = await server.next_upload()
        reads = list(upload.reads)
        if len(reads) == 1:  # the two reads may straddle an upload tick
            reads += (await server.next_upload())[1].reads
    assert [(r.tag_id, r.read_at_local, r.antenna, r.rssi_dbm, r.alarm) for r in reads] == [
        (0x12345678, datetime(2026, 11, 29, 18, 9, 58), 1, -60, False),
        (0x0A0B0C0D, datetime(2026, 11, 30, 0, 0, 1), 0, -81, True),  # UTC+8 crosses midnight
    ]
    assert server.rejected == {}


async def test_many_uploads_split_across_writes_decode_with_no_rejections() -> None:
    tags = list(range(0x1000, 0x1000 + 600))
    async with serving(VendorServer()) as server, running(station_for(server, seed=7)) as station:
        await server.next(Login)
        for n, tag_id in enumerate(tags):
            station.hear(beacon(tag_id, rssi_dbm=-50 - n % 40))
            if n % 50 == 0:
                await asyncio.sleep(0)
        uploaded: list[int] = []
        while len(uploaded) < len(tags):
            uploaded += [r.tag_id for r in (await server.next_upload())[1].reads]
    assert uploaded == tags
    assert server.rejected == {}
    assert station.stats.writes > station.stats.frames_sent  # frames did go out in pieces


async def test_an_upload_whose_reply_is_withheld_is_sent_again_with_the_same_sequence() -> None:
    async with serving(VendorServer(withhold_upload_replies=1)) as server, running(station_for(server)) as station:
        await server.next(Login)
        station.hear(beacon(0x12345678))
        _, first = await server.next_upload()
        _, again = await server.next_upload()
        station.hear(beacon(0x87654321))
        _, after = await server.next_upload()
    assert again == first
    assert [r.tag_id for r in after.reads] == [0x87654321]
    assert after.sequence > first.sequence
    assert station.stats.uploads_resent >= 1


async def test_a_refused_login_is_retried_after_a_back_off() -> None:
    async with serving(VendorServer(refuse_logins=2)) as server, running(station_for(server)) as station:
        logins = [(await server.next(Login))[0] for _ in range(3)]
        await server.next(Heartbeat)  # heartbeats begin once the third login is accepted
    assert logins == [1, 1, 1]  # the same connection: a refusal is not a dropped link
    assert station.stats.logins_refused == 2
    assert station.stats.logins == 1


async def test_after_the_server_closes_the_connection_the_station_reconnects_registers_and_resends() -> None:
    server = VendorServer(close_after_uploads=1, withhold_upload_replies=1)
    async with serving(server), running(station_for(server)) as station:
        await server.next(Login)
        station.hear(beacon(0x12345678))
        connection, lost = await server.next_upload()  # the server closes without replying
        again_connection, register = await server.next(Register)
        await server.next(Login)
        resend_connection, resent = await server.next_upload()
        await server.next(Heartbeat)
    assert (connection, again_connection, resend_connection) == (1, 2, 2)
    assert resent == lost  # same sequence, same reads: the bridge can tell it is a resend
    assert register.sequence > lost.sequence
    assert station.stats.connections == 2


def test_tamper_is_the_alarm_bit_and_low_battery_bit_1_and_the_counter_is_carried() -> None:
    read = tag_read(
        Beacon(0x12345678, 0x0102, TagFlags.TAMPER | TagFlags.LOW_BATTERY | TagFlags.MOTION, -70, 1),
        datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC),
        datetime.now().astimezone().tzinfo or UTC,
    )
    assert read.status == STATUS_ALARM | STATUS_LOW_BATTERY
    assert read.alarm
    assert read.carried_info == 0x0102
    assert read.check == 0x12 ^ 0x34 ^ 0x56 ^ 0x78


def test_planned_writes_split_and_join_frames_but_carry_the_same_bytes() -> None:
    rng = random.Random(3)
    frames = [encode(Heartbeat("MR7901-000123", n)) for n in range(200)]
    pieces = plan_writes(frames, rng)
    assert b"".join(pieces) == b"".join(frames)
    assert len(pieces) > len(frames)
    ends = {sum(len(f) for f in frames[: n + 1]) for n in range(len(frames))}
    at, joined = 0, 0
    for piece in pieces:
        joined += any(at < end < at + len(piece) for end in ends)
        at += len(piece)
    assert joined > 0
    decoder = Mr7901Decoder()
    assert [m.sequence for p in pieces for m in decoder.feed(p)] == list(range(200))


async def test_a_towns_station_run_as_a_vendor_station_uploads_the_tags_it_hears() -> None:
    town = Town.generate(21, stations=3, bikes=120)
    async with serving(VendorServer()) as server, running(station_for(server)) as station:
        with SimRunner(town, speedup=20.0, listeners={"st-002": station}) as runner:
            _, upload = await server.next_upload()
    assert set(runner.ports) == {"st-001", "st-003"}  # the vendor station has no pty
    assert {r.tag_id for r in upload.reads} <= {b.tag_id for b in town.bikes}
    assert upload.reads and server.rejected == {}


def test_vendor_stations_are_the_stations_nearest_the_centre_named_by_device_id() -> None:
    town = Town.generate(21, stations=3, bikes=10)
    stations = vendor_stations(town, 2, "127.0.0.1", 9000)
    edge = max(town.stations, key=lambda s: math.hypot(s.x_m, s.y_m))
    assert edge.station_id == "st-002" and "st-002" not in stations
    assert {sid: s.device_id for sid, s in stations.items()} == {"st-001": "MR7901-st-001", "st-003": "MR7901-st-003"}
    assert vendor_device_ids(town, 2) == {"st-001": "MR7901-st-001", "st-003": "MR7901-st-003"}  # known beforehand
    with pytest.raises(TownError, match="4 vendor stations"):
        vendor_stations(town, 4, "127.0.0.1", 9000)


async def test_python_dash_m_firmware_sim_runs_vendor_stations_against_a_server() -> None:
    async with serving(VendorServer()) as server:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "firmware_sim", "--stations", "2", "--bikes", "60", "--speedup", "20"],
            *["--vendor-server", f"127.0.0.1:{server.port}", "--vendor-stations", "1"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert proc.stdout is not None
            first = json.loads(await asyncio.wait_for(proc.stdout.readline(), WAIT_S))
            _, register = await server.next(Register)
            await server.next(Login)
        finally:
            proc.terminate()
            await proc.wait()
    assert first["vendor_stations"] == {"st-001": "MR7901-st-001"}
    assert set(first["ports"]) == {"st-002"}
    assert register.device_id == "MR7901-st-001"
