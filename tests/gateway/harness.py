"""What the gateway tests drive it with: a fake radio module on a pty, an MQTT watcher, a TCP hop."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
import time
import tty
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bikeguard.services import Broker, free_port
from gateway.settings import GatewaySettings
from gateway.station import Station
from protocol.frames import Beacon, Frame, TagFlags, encode
from protocol.messages import Confirmation, SightingBatch, utcnow
from protocol.topics import CONFIRMATIONS, ROOT, confirmations_topic


class FakeModule:
    """The radio module's end of a pty: frames written here arrive on the gateway's serial port."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        # Raw from the start: the line discipline would otherwise turn 0x0D into 0x0A before
        # the gateway's pyserial switches the port to raw.
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.closed = False

    def send(self, *frames: Frame) -> None:
        """Write frames as the module would."""
        self.send_raw(b"".join(encode(f) for f in frames))

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes (garbage included)."""
        os.write(self.master, data)

    def unread(self) -> int:
        """Bytes written here that the gateway has not read yet (the serial port's input queue); 0 once closed."""
        if self.closed:
            return 0
        count: int = struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0\0\0\0"))[0]
        return count

    def wait_read(self, timeout_s: float = 5.0) -> bool:
        """Wait until the gateway has read everything written (twice nothing queued 20 ms apart: the pty hands
        written bytes over a moment later); False if it did not within timeout_s."""
        deadline = time.monotonic() + timeout_s
        empty = 0
        while time.monotonic() < deadline:
            empty = empty + 1 if self.unread() == 0 else 0
            if empty >= 2:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Unplug: close both ends, so the gateway's reads fail and the device node goes away."""
        if not self.closed:
            os.close(self.master)
            os.close(self.slave)
            self.closed = True


def beacon(tag_id: int, rssi_dbm: int = -70, antenna: int = 0, flags: int = 0, counter: int = 0) -> Beacon:
    """A beacon with sensible defaults."""
    return Beacon(tag_id=tag_id, counter=counter, flags=TagFlags(flags), rssi_dbm=rssi_dbm, antenna=antenna)


def fast_settings(
    station_id: str, serial_url: str, mqtt_url: str, spool_path: Path, **overrides: Any
) -> GatewaySettings:
    """Settings with test-sized timings."""
    values: dict[str, Any] = {
        "station_id": station_id,
        "serial_url": serial_url,
        "mqtt_url": mqtt_url,
        "spool_path": spool_path,
        "passage_gap_s": 0.4,
        "passage_max_s": 30,
        "batch_interval_s": 0.1,
        "status_interval_s": 30,
        "serial_reopen_min_s": 0.05,
        "serial_reopen_max_s": 0.5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.4,
        "publish_timeout_s": 5,
    }
    values.update(overrides)
    return GatewaySettings(**values)


async def eventually(
    check: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition", interval_s: float = 0.02
) -> Any:
    """Poll check until it returns something truthy; return it, or fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def running(station: Station) -> AsyncIterator[Station]:
    """Run a station in the background; cancel it (a clean shutdown) on the way out."""
    task = asyncio.create_task(station.run())
    try:
        # pyserial flushes the input on open: frames written before that would be lost.
        await eventually(lambda: task.done() or (station.radio and station.radio.opened), what="port open")
        if task.done():
            task.result()
        yield station
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def mqtt_client(broker: Broker) -> aiomqtt.Client:
    """An MQTT client with an id of its own: amqtt shares one session among clients with an empty id."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"test-{uuid.uuid4().hex[:12]}",
        username=broker.username,
        password=broker.password,
    )


class Watcher:
    """A backend stand-in: records what one station publishes, in arrival order, and (`confirm`) confirms each
    sightings batch as the backend does once it is stored."""

    def __init__(self, client: aiomqtt.Client, station_id: str, *, confirm: bool = True) -> None:
        self.client = client
        self.station_id = station_id
        self.prefix = f"{ROOT}/stations/{station_id}/"
        self.confirm = confirm
        self.messages: list[tuple[str, bytes]] = []
        self.confirmed: list[int] = []

    def of(self, kind: str) -> list[bytes]:
        """Payloads received on one station topic kind (sightings, alerts, status)."""
        return [p for k, p in self.messages if k == kind]

    async def wait(self, kind: str, count: int = 1, timeout_s: float = 15.0) -> list[bytes]:
        """Wait until `count` messages of a kind have arrived; return them all."""
        return await eventually(
            lambda: len(self.of(kind)) >= count and self.of(kind), timeout_s, f"{count} {kind} message(s)"
        )

    async def _collect(self) -> None:
        async for message in self.client.messages:
            topic = str(message.topic)
            # Only this station's topics (a broker other than ours may hand over more, as amqtt 0.12 alone did).
            if not topic.startswith(self.prefix):
                continue
            kind = topic.rsplit("/", 1)[-1]
            if kind == CONFIRMATIONS:
                continue  # ours, or another test's backend stand-in
            assert isinstance(message.payload, bytes)
            self.messages.append((kind, message.payload))
            if kind == "sightings" and self.confirm:
                await self.confirm_seqs([SightingBatch.parse(message.payload).batch_seq])

    async def confirm_seqs(self, batch_seqs: list[int]) -> None:
        """Publish a confirmation of these batch_seqs to the station, as the backend does after its commit."""
        confirmation = Confirmation(station_id=self.station_id, batch_seqs=batch_seqs, sent_at=utcnow())
        await self.client.publish(confirmations_topic(self.station_id), confirmation.to_json(), qos=1)
        self.confirmed += batch_seqs


@contextlib.asynccontextmanager
async def watching(broker: Broker, station_id: str, *, confirm: bool = True) -> AsyncIterator[Watcher]:
    """Subscribe to everything one station publishes; confirm its batches unless told not to."""
    async with mqtt_client(broker) as client:
        await client.subscribe(f"{ROOT}/stations/{station_id}/#", qos=1)
        watcher = Watcher(client, station_id, confirm=confirm)
        task = asyncio.create_task(watcher._collect())
        try:
            yield watcher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def retained(broker: Broker, topic: str, timeout_s: float = 10.0) -> bytes | None:
    """The retained message on a topic, as a newly connecting subscriber sees it."""
    async with mqtt_client(broker) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    if str(message.topic) == topic:
                        assert isinstance(message.payload, bytes)
                        return message.payload
        except TimeoutError:
            return None
    return None


class TcpHop:
    """A TCP forwarder in front of the broker: off until `open()`, and `cut()` kills it uncleanly."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """mqtt:// URL of the hop, with the broker's credentials (the hop forwards bytes, CONNECT included)."""
        return self.broker.url.replace(f"@{self.broker.host}:{self.broker.port}", f"@127.0.0.1:{self.port}")

    async def open(self) -> None:
        """Start accepting connections and forwarding them to the broker."""
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        self._writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def freeze(self) -> None:
        """Stop forwarding but keep every connection open: a broker that has hung, not one that has gone."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def cut(self) -> None:
        """Stop listening and abort every connection: no DISCONNECT, so the broker fires the will."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()
        await self.freeze()


async def scrape_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A gateway's /metrics on this host, by (sample name, sorted labels). Scraped from a thread: the collector asks
    this event loop for its snapshot, which must stay free."""

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    text = await asyncio.to_thread(get)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
