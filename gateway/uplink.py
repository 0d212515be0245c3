"""The MQTT side: status and last will, hot list and commands in, the spool drained out.

One aiomqtt connection per attempt. Everything outgoing except the status is already in the
spool, so a dropped connection only means reconnecting (with jittered exponential backoff)
and sending again whatever had no PUBACK yet.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiomqtt

from gateway.hotlist import HotList
from gateway.settings import GatewaySettings
from gateway.spool import Entry, Spool
from protocol.messages import Hotlist, MessageError, StationStatus, utcnow
from protocol.topics import HOTLIST, command_topic, station_topic

log = logging.getLogger(__name__)

T = TypeVar("T")
_STABLE_S = 10.0
_READ_AHEAD = 4  # windows of messages read from the spool at once while draining


def tolerate_closed_socket_callbacks(loop: asyncio.AbstractEventLoop) -> None:
    """Keep a known aiomqtt race out of the error log; every other loop error goes where it went before.

    aiomqtt has the loop call `add_writer(fd, …)` (call_soon_threadsafe) whenever paho wants to write. When the
    connection drops in the same loop iteration, paho has closed the socket by the time that runs, and asyncio
    reports "Exception in callback …add_writer(…)" with OSError EBADF. Nothing is lost: the connection is gone
    and the uplink reconnects, resending whatever had no PUBACK. So it is a debug line, not an error.
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "tolerates_closed_sockets", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if (isinstance(exc, OSError) and exc.errno == errno.EBADF
                and ("add_writer(" in message or "add_reader(" in message)):
            log.debug("socket closed before the loop watched it (connection already lost): %s", message)
            return
        if previous is None:
            loop.default_exception_handler(context)
        else:
            previous(loop, context)

    handler.tolerates_closed_sockets = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


class Uplink:
    """Keeps one station connected to the broker and its spool drained."""

    def __init__(
        self,
        settings: GatewaySettings,
        spool: Spool,
        hotlist: HotList,
        status: Callable[[], StationStatus],
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.hotlist = hotlist
        self.status = status
        self.status_topic = station_topic(settings.station_id, "status")
        self.connected = False
        self.connects = 0
        self.messages_published = 0
        self.sightings_published = 0
        self.hotlist_rejected = 0
        self._spooled = asyncio.Event()

    def notify(self) -> None:
        """Tell the drain something new is in the spool."""
        self._spooled.set()

    def _client(self) -> aiomqtt.Client:
        host, port, username, password = self.settings.mqtt_address
        offline = StationStatus(station_id=self.settings.station_id, state="offline")
        client = aiomqtt.Client(
            host,
            port,
            username=username,
            password=password,
            identifier=f"gateway-{self.settings.station_id}",
            will=aiomqtt.Will(self.status_topic, offline.to_json(), qos=1, retain=True),
            # A persistent session: hot-list updates and commands sent while we are away wait for us.
            clean_session=False,
            keepalive=self.settings.mqtt_keepalive_s,
            timeout=self.settings.publish_timeout_s,
        )
        # A full window of publishes awaiting PUBACK is normal here, not worth a warning each.
        client.pending_calls_threshold = self.settings.inflight_max + 10
        return client

    async def run(self) -> None:
        """Stay connected until cancelled; on cancellation say offline and disconnect cleanly."""
        tolerate_closed_socket_callbacks(asyncio.get_running_loop())
        backoff = self.settings.reconnect_min_s
        connected_at = 0.0
        while True:
            client = self._client()
            try:
                async with client:
                    _stop_if_told()
                    self.connected = True
                    self.connects += 1
                    connected_at = time.monotonic()
                    log.info("%s: connected to %s", self.settings.station_id, self.settings.mqtt_endpoint)
                    try:
                        await self._session(client)
                    except asyncio.CancelledError:
                        await self._say_offline(client)
                        raise
            except* aiomqtt.MqttError as group:
                log.warning(
                    "%s: MQTT %s: %s",
                    self.settings.station_id,
                    self.settings.mqtt_endpoint,
                    "; ".join(str(e) for e in group.exceptions),
                )
            finally:
                # Only a connection that held for a while resets the backoff: one the broker drops at
                # once (say, a second gateway with our client id) must not turn into a tight loop.
                if self.connected and time.monotonic() - connected_at >= _STABLE_S:
                    backoff = self.settings.reconnect_min_s
                self.connected = False
                _forget_disconnect_error(client)
            _stop_if_told()  # while a failing connection was being closed: stop, do not reconnect
            # Jitter keeps a fleet that lost the broker together from reconnecting in lockstep.
            delay = random.uniform(backoff / 2, backoff)
            log.info("%s: reconnecting in %.1f s", self.settings.station_id, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.settings.reconnect_max_s)

    async def _session(self, client: aiomqtt.Client) -> None:
        await self._publish_status(client)
        await self._answered(client.subscribe(HOTLIST, qos=1, timeout=math.inf))
        await self._answered(client.subscribe(command_topic(self.settings.station_id, "+"), qos=1, timeout=math.inf))
        # Not a TaskGroup: on Python 3.11 one whose task fails leaves our task marked as cancelled, and one
        # cancelled from outside just as a task fails reports the failure and drops the cancellation.
        parts = [
            asyncio.create_task(self._receive(client)),
            asyncio.create_task(self._drain(client)),
            asyncio.create_task(self._heartbeat(client)),
        ]
        try:
            await asyncio.wait(parts, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for part in parts:
                part.cancel()
            await asyncio.wait(parts)
        errors = [e for part in parts if not part.cancelled() and (e := part.exception()) is not None]
        if errors:
            raise errors[0]

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        offline = StationStatus(station_id=self.settings.station_id, state="offline", sent_at=utcnow())
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(2.0):
                await client.publish(self.status_topic, offline.to_json(), qos=1, retain=True, timeout=math.inf)
                log.info("%s: offline", self.settings.station_id)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        await self._answered(client.publish(self.status_topic, self.status().to_json(), qos=1, retain=True,
                                            timeout=math.inf))

    async def _answered(self, call: Awaitable[T]) -> T:
        """Await an aiomqtt publish or subscribe made with timeout=math.inf, under our own publish timeout.

        aiomqtt's own timeout is asyncio.wait_for, which on Python 3.11 drops a cancellation that arrives just
        as the broker answers: a busy gateway told to stop would have gone on running.
        """
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                return await call
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval_s)
            await self._publish_status(client)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the spool in send order, up to inflight_max awaiting PUBACK; delete what is acknowledged.

        A sliding window: each PUBACK lets the next message go at once. Waiting for a whole window
        to be acknowledged stalls on brokers that delay small writes (Mosquitto's default, no
        TCP_NODELAY): their PUBACKs then wait for a TCP ACK that our next PUBLISH would carry.
        Acknowledged messages are deleted from the spool in groups: one commit per message would
        cost an SD card more than the network.
        """
        window = self.settings.inflight_max
        flying: dict[asyncio.Task[None], Entry] = {}
        acked: list[Entry] = []
        ahead: collections.deque[Entry] = collections.deque()  # read from the spool, not yet sent
        wake: asyncio.Task[bool] | None = None
        try:
            while True:
                if len(flying) < window:
                    if self._spooled.is_set() or not ahead:
                        # Read again: something new (an alert goes first) or nothing left read ahead.
                        # No await between clear and peek: a put after the peek sets the event again.
                        self._spooled.clear()
                        busy = {e.id for e in flying.values()} | {e.id for e in acked}
                        ahead = collections.deque(
                            e for e in self.spool.peek(_READ_AHEAD * window + len(busy)) if e.id not in busy
                        )
                    while ahead and len(flying) < window:
                        entry = ahead.popleft()
                        task = asyncio.create_task(
                            self._answered(client.publish(entry.topic, entry.payload, qos=1, timeout=math.inf))
                        )
                        flying[task] = entry
                if acked and (len(acked) >= window // 2 or not flying):
                    self._ack(acked)
                    acked = []
                if wake is None or wake.done():
                    wake = asyncio.create_task(self._spooled.wait())
                if not flying:
                    await wake
                    continue
                waits: list[asyncio.Future[Any]] = list(flying)
                if len(flying) < window:
                    waits.append(wake)  # something new may fill the window meanwhile
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                failed: BaseException | None = None
                # Send order, so the spool deletes (and counts) them in order too.
                for task in [t for t in flying if t in done]:
                    entry = flying.pop(task)
                    if task.exception() is None:
                        acked.append(entry)
                    else:
                        failed = failed or task.exception()
                if failed is not None:
                    raise failed
        finally:
            for task in flying:
                task.cancel()
            if flying:
                await asyncio.gather(*flying, return_exceptions=True)
            acked += [e for t, e in flying.items() if not t.cancelled() and t.exception() is None]
            self._ack(acked)
            if wake is not None:
                wake.cancel()

    def _ack(self, entries: list[Entry]) -> None:
        """Delete acknowledged messages from the spool and count them."""
        if not entries:
            return
        self.spool.ack(e.id for e in entries)
        self.messages_published += len(entries)
        self.sightings_published += sum(e.sightings for e in entries)

    async def _receive(self, client: aiomqtt.Client) -> None:
        commands = command_topic(self.settings.station_id, "+")
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if message.topic.matches(HOTLIST):
                self._take_hotlist(payload)
            elif message.topic.matches(commands):
                log.info("%s: command %s: %r", self.settings.station_id, message.topic, payload[:200])
            else:
                # amqtt 0.12 sends a connecting client retained messages of other clients' subscriptions.
                log.debug("%s: ignoring message on %s", self.settings.station_id, message.topic)

    def _take_hotlist(self, payload: bytes) -> None:
        if not payload:
            # An empty retained message only clears the broker's copy; keep what we know.
            log.info(
                "%s: hot list cleared on the broker; keeping version %d",
                self.settings.station_id,
                self.hotlist.version,
            )
            return
        try:
            message = Hotlist.parse(payload)
        except MessageError as exc:
            self.hotlist_rejected += 1
            log.warning("%s: bad hot list (%s): %r", self.settings.station_id, exc.reason, payload[:200])
            return
        if self.hotlist.offer_message(message):
            self.spool.save_hotlist(self.hotlist.version, self.hotlist.tags)
            log.info(
                "%s: hot list version %d, %d tags",
                self.settings.station_id,
                message.version,
                len(self.hotlist.tags),
            )
        else:
            log.debug(
                "%s: hot list version %d not newer than %d",
                self.settings.station_id,
                message.version,
                self.hotlist.version,
            )


def _stop_if_told() -> None:
    """Raise the cancellation of this task if one was requested but dropped on the way (see Uplink._answered):
    told to stop, we stop rather than go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _forget_disconnect_error(client: aiomqtt.Client) -> None:
    """Read the reason a lost connection ended with (already logged by whoever noticed first).

    aiomqtt keeps it in a future that only its message iterator reads; when a failed publish noticed the
    loss first, nobody does, and asyncio reports "Future exception was never retrieved" at error level.
    """
    disconnected = getattr(client, "_disconnected", None)
    if isinstance(disconnected, asyncio.Future) and disconnected.done() and not disconnected.cancelled():
        disconnected.exception()
