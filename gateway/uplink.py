"""The MQTT side: status and last will, hot list and commands in, the spool drained out.

One `gateway.mqtt.Connection` per attempt. Everything outgoing except the status is already in the
spool, so a dropped connection only means reconnecting (with jittered exponential backoff) and
sending again whatever the backend has not confirmed yet. A PUBACK only marks a sightings batch
sent; the backend's confirmation (on the station's confirmations topic) deletes it, and a batch
left unconfirmed for `confirm_timeout_s` (doubling per attempt) goes again. When the backend asks for
batches it is missing (the station's requests topic), those still spooled go again at once and the
station answers, on its gone topic, which it no longer holds and why. A command (the station's commands topics) is
acted on only if it is signed by the backend, for this station, unexpired and newer than the last one taken
(gateway/commands.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from gateway.commands import CommandRefused, check_command
from gateway.hotlist import HotList, HotlistRefused, check_hotlist
from gateway.mqtt import Connection, Message, MqttError, NoAnswer, Will
from gateway.publish_window import PublishWindow
from gateway.settings import GatewaySettings
from gateway.spool import Entry, Spool
from protocol.messages import (
    GONE_MAX_RANGES,
    BatchesGone,
    BatchRequest,
    Confirmation,
    GoneRange,
    MessageError,
    StationCommand,
    StationStatus,
    utcnow,
)
from protocol.signing import read_public_key
from protocol.topics import GONE, HOTLIST, command_topic, confirmations_topic, requests_topic, station_topic

log = logging.getLogger(__name__)

_STABLE_S = 10.0
_GOODBYE_S = 2.0  # what the offline status may take when told to stop


class Uplink:
    """Keeps one station connected to the broker and its spool drained."""

    def __init__(
        self,
        settings: GatewaySettings,
        spool: Spool,
        hotlist: HotList,
        status: Callable[[], StationStatus],
        pace: Callable[[], AbstractAsyncContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """`pace`: the slot the drain and the received messages' handling wait for, in a process of many stations
        (gateway.pacer); by default none."""
        self.settings = settings
        self._pace = pace
        self.spool = spool
        self.hotlist = hotlist
        self.status = status
        self.status_topic = station_topic(settings.station_id, "status")
        self.confirmations_topic = confirmations_topic(settings.station_id)
        self.requests_topic = requests_topic(settings.station_id)
        self.gone_topic = station_topic(settings.station_id, GONE)
        self.connected = False
        self.connects = 0
        self.messages_published = 0
        self.sightings_published = 0
        # Refused hot lists by reason (gateway.hotlist.RefusalReason).
        self.hotlist_rejected: Counter[str] = Counter()
        # Commands refused by reason (gateway.commands.RefusalReason), and those acted on by name.
        self.commands_refused: Counter[str] = Counter()
        self.commands_done: Counter[str] = Counter()
        self.command_seq = spool.load_command_seq()
        key = settings.hotlist_public_key
        self._hotlist_key = None if key is None else read_public_key(key)
        if key is None:
            log.warning(
                "%s: no BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY: this station takes no hot list (it flags only from the"
                " list its spool holds)",
                settings.station_id,
            )
        self.batches_confirmed = 0
        self.sightings_confirmed = 0
        self.batches_resent = 0
        self.confirmations_rejected = 0
        self.requests = 0  # the backend's requests for batches it is missing
        self.requests_rejected = 0
        self.batches_requested_held = 0  # requested batches still spooled, sent again at once
        self.batches_requested_gone = 0  # requested batches no longer held, answered as gone
        self._spooled = asyncio.Event()  # something new in the spool
        self._woken = asyncio.Event()  # something for the drain to do: new in the spool, a PUBACK, a failure
        self._status_due = asyncio.Event()
        self._window = PublishWindow(settings.inflight_max)
        # The drain's connection and its publishes awaiting PUBACK while it runs, for send_now.
        self._mqtt: Connection | None = None
        self._sending: dict[asyncio.Future[list[int]], tuple[Entry, float]] | None = None

    def notify(self) -> None:
        """Tell the drain something new is in the spool."""
        self._spooled.set()
        self._woken.set()

    def send_now(self) -> None:
        """Publish what is new in the spool in the caller's turn of the event loop, as far as the publish window has
        room, rather than in the drain's next turn: a station calls it for an alert. Nothing while no session is up
        (the drain sends it when one is); a connection found gone here is the session's to notice."""
        mqtt, sending = self._mqtt, self._sending
        if mqtt is None or sending is None:
            return
        with contextlib.suppress(MqttError):
            self._send(mqtt, sending)

    def _send(self, mqtt: Connection, sending: dict[asyncio.Future[list[int]], tuple[Entry, float]]) -> None:
        """Read the spool if the window wants it, and publish what the window lets go now."""
        window = self._window
        if window.needs_reading(self._spooled.is_set()):
            # No await between clear and peek: a put after the peek sets the event again.
            self._spooled.clear()
            window.read(self.spool.peek(window.read_limit))
        for entry in window.send():
            self.batches_resent += entry.attempts > 0
            answer = mqtt.publish_nowait(entry.topic, entry.payload, qos=1)
            answer.add_done_callback(self._wake)
            sending[answer] = (entry, time.monotonic() + self.settings.publish_timeout_s)

    def _connection(self) -> Connection:
        host, port, username, password = self.settings.mqtt_address
        offline = StationStatus(station_id=self.settings.station_id, state="offline")
        return Connection(
            host,
            port,
            client_id=f"gateway-{self.settings.station_id}",
            username=username,
            password=password,
            will=Will(self.status_topic, offline.to_json(), qos=1, retain=True),
            # A persistent session: hot-list updates and commands sent while we are away wait for us.
            clean_session=False,
            keepalive_s=self.settings.mqtt_keepalive_s,
            timeout_s=self.settings.publish_timeout_s,
            tls=self.settings.mqtt_tls,
        )

    async def run(self) -> None:
        """Stay connected until cancelled; on cancellation say offline and disconnect cleanly."""
        backoff = self.settings.reconnect_min_s
        connected_at = 0.0
        while True:
            try:
                async with self._connection() as mqtt:
                    _stop_if_told()
                    self.connected = True
                    self.connects += 1
                    connected_at = time.monotonic()
                    log.info("%s: connected to %s", self.settings.station_id, self.settings.mqtt_endpoint)
                    try:
                        await self._session(mqtt)
                    except asyncio.CancelledError:
                        await self._say_offline(mqtt)
                        raise
            except MqttError as exc:
                log.warning("%s: MQTT %s: %s", self.settings.station_id, self.settings.mqtt_endpoint, exc)
            finally:
                # Only a connection that held for a while resets the backoff: one the broker drops at
                # once (say, a second gateway with our client id) must not turn into a tight loop.
                if self.connected and time.monotonic() - connected_at >= _STABLE_S:
                    backoff = self.settings.reconnect_min_s
                self.connected = False
                resend = self._window.lost()
                if resend:
                    log.debug("%s: %d messages without PUBACK go again", self.settings.station_id, len(resend))
            _stop_if_told()  # while a failing connection was being closed: stop, do not reconnect
            # Jitter keeps a fleet that lost the broker together from reconnecting in lockstep.
            delay = random.uniform(backoff / 2, backoff)
            log.info("%s: reconnecting in %.1f s", self.settings.station_id, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.settings.reconnect_max_s)

    async def _session(self, mqtt: Connection) -> None:
        # A new connection: the broker may have lost whatever it acknowledged before (a restart without
        # persistence, a shared subscription it forgot), so every unconfirmed batch goes again.
        self.spool.resend_all()
        await mqtt.subscribe(self.confirmations_topic, qos=1)
        await mqtt.subscribe(self.requests_topic, qos=1)
        await self._publish_status(mqtt)
        await mqtt.subscribe(HOTLIST, qos=1)
        await mqtt.subscribe(command_topic(self.settings.station_id, "+"), qos=1)
        # Not a TaskGroup: on Python 3.11 one whose task fails leaves our task marked as cancelled, and one
        # cancelled from outside just as a task fails reports the failure and drops the cancellation.
        parts = [
            asyncio.create_task(self._receive(mqtt)),
            asyncio.create_task(self._drain(mqtt)),
            asyncio.create_task(self._heartbeat(mqtt)),
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

    async def _say_offline(self, mqtt: Connection) -> None:
        offline = StationStatus(station_id=self.settings.station_id, state="offline", sent_at=utcnow())
        with contextlib.suppress(MqttError, TimeoutError):
            async with asyncio.timeout(_GOODBYE_S):
                await mqtt.publish(self.status_topic, offline.to_json(), qos=1, retain=True)
                log.info("%s: offline", self.settings.station_id)

    async def _publish_status(self, mqtt: Connection) -> None:
        await mqtt.publish(self.status_topic, self.status().to_json(), qos=1, retain=True)

    def status_changed(self) -> None:
        """Publish the status now rather than at the next heartbeat (a vendor station logged in or went silent)."""
        self._status_due.set()

    async def _heartbeat(self, mqtt: Connection) -> None:
        """The status every status_interval_s, or sooner: at once when it changes, and each wait a random 0-20 %
        shorter, so that stations of one process (the vendor bridge's thousand, logged in within a second or two)
        drift apart rather than publish together every interval: 826 statuses in two turns of the loop (63 and 41 ms)
        held every station's alerts (docs/benchmarks.md, "Vendor bridge")."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.status_interval_s * random.uniform(0.8, 1.0)):
                    await self._status_due.wait()
            self._status_due.clear()
            await self._publish_status(mqtt)

    async def _drain(self, mqtt: Connection) -> None:
        """Publish the spool in send order through the publish window; delete what is acknowledged.

        No task a publish: each PUBACK's future wakes the drain (as a new message in the spool does), and a PUBACK
        not come within publish_timeout_s ends the session like any other lost connection."""
        window = self._window
        woken = self._woken
        sending: dict[asyncio.Future[list[int]], tuple[Entry, float]] = {}  # in send order: (entry, its deadline)
        timeout_s = self.settings.publish_timeout_s
        self._mqtt, self._sending = mqtt, sending
        try:
            while True:
                async with self._pace():
                    woken.clear()
                    failed = self._settle(sending)
                    if failed is not None:
                        raise failed
                    self._send(mqtt, sending)
                    self._ack(window.take_acknowledged())
                    # The next batch whose confirmation falls overdue wakes us like a new message would; the oldest
                    # PUBACK awaited, when it falls due.
                    resend_at = self.spool.next_resend_at()
                    oldest = next(iter(sending.items()), None)  # (its answer, (entry, deadline))
                    due = [at for at in (resend_at, oldest and oldest[1][1]) if at is not None]
                if not woken.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(min(due) - time.monotonic(), 0.0) if due else None):
                            await woken.wait()
                now = time.monotonic()
                if resend_at is not None and now >= resend_at:
                    self._spooled.set()
                if oldest is not None and not oldest[0].done() and now >= oldest[1][1]:
                    raise NoAnswer(f"no PUBACK from {mqtt.endpoint} in {timeout_s:g} s")
        finally:
            self._mqtt = self._sending = None
            for answer in sending:
                answer.cancel()
            self._settle(sending)  # what was acknowledged meanwhile; failures are the session's end
            self._ack(window.take_acknowledged(all_now=True))

    def _wake(self, _: object = None) -> None:
        self._woken.set()

    def _settle(self, sending: dict[asyncio.Future[list[int]], tuple[Entry, float]]) -> BaseException | None:
        """Take the finished publishes out of `sending` in send order (so the spool deletes and counts them in
        order too); return the first failure."""
        failed: BaseException | None = None
        for answer in [a for a in sending if a.done()]:
            entry, _ = sending.pop(answer)
            if answer.cancelled():
                continue
            if answer.exception() is None:
                self._window.acknowledge(entry)
            else:
                failed = failed or answer.exception()
        return failed

    def _ack(self, entries: list[Entry]) -> None:
        """Mark acknowledged messages sent in the spool (alerts go; batches wait for confirmation) and count them."""
        if not entries:
            return
        s = self.settings
        self.spool.mark_sent(entries, timeout_s=s.confirm_timeout_s, max_s=s.confirm_backoff_max_s)
        self.messages_published += len(entries)
        self.sightings_published += sum(e.sightings for e in entries)

    async def _receive(self, mqtt: Connection) -> None:
        commands = command_topic(self.settings.station_id, "+")
        async for message in mqtt.messages():
            answers: list[bytes] = []
            command: StationCommand | None = None
            async with self._pace():
                if message.matches(self.requests_topic):
                    answers = self._take_request(message.payload)
                elif message.matches(commands):
                    command = self._take_command(message)
                else:
                    self._take(message)
            for answer in answers:
                # Not spooled: a lost answer costs only the backend's next request.
                await mqtt.publish(self.gone_topic, answer, qos=1)
            if command is not None:
                await self._act(mqtt, command)

    def _take_command(self, message: Message) -> StationCommand | None:
        """The command in a message if the station may act on it (its seq is then kept); None after counting and
        logging why not."""
        s = self.settings
        name = message.topic.rsplit("/", 1)[-1]
        try:
            command = check_command(
                message.payload,
                name,
                station_id=s.station_id,
                key=self._hotlist_key,
                last_seq=self.command_seq,
                now=utcnow(),
            )
        except CommandRefused as exc:
            self.commands_refused[exc.reason] += 1
            log.warning("%s: command %r refused (%s): %r", s.station_id, name[:40], exc, message.payload[:200])
            return None
        # Kept before acting: a command whose action fails half-way is not taken a second time.
        self.spool.save_command_seq(command.seq)
        self.command_seq = command.seq
        return command

    async def _act(self, mqtt: Connection, command: StationCommand) -> None:
        """Do what an accepted command says (its name is one of protocol.messages.COMMAND_NAMES)."""
        if command.name == "status":
            await self._publish_status(mqtt)
        elif command.name == "resend":
            self.spool.resend_all()
            self.notify()
        self.commands_done[command.name] += 1
        log.info("%s: command %s (seq %d) done", self.settings.station_id, command.name, command.seq)

    def _take_request(self, payload: bytes) -> list[bytes]:
        """Make the requested batches still spooled due at once; the answers about the others, to publish."""
        try:
            message = BatchRequest.parse(payload)
            if message.station_id != self.settings.station_id:
                raise MessageError(f"station_id {message.station_id!r} is not ours", payload)
        except MessageError as exc:
            self.requests_rejected += 1
            log.warning("%s: bad batch request (%s): %r", self.settings.station_id, exc.reason, payload[:200])
            return []
        self.requests += 1
        held, gone = self.spool.request([(r.first, r.last) for r in message.ranges])
        self.batches_requested_held += held
        self.batches_requested_gone += sum(last - first + 1 for first, last, _ in gone)
        if held:
            self.notify()
        log.info(
            "%s: the backend asked for %d ranges of batches: %d still spooled go again, %d ranges no longer held",
            self.settings.station_id,
            len(message.ranges),
            held,
            len(gone),
        )
        return [
            BatchesGone(
                station_id=self.settings.station_id,
                ranges=[
                    GoneRange(first=first, last=last, reason=why) for first, last, why in gone[i : i + GONE_MAX_RANGES]
                ],
                next_batch_seq=self.spool.next_batch_seq,
                sent_at=utcnow(),
            ).to_json()
            for i in range(0, len(gone), GONE_MAX_RANGES)
        ]

    def _take(self, message: Message) -> None:
        if message.matches(self.confirmations_topic):
            self._take_confirmation(message.payload)
        elif message.matches(HOTLIST):
            self._take_hotlist(message.payload)
        else:
            # amqtt 0.12 sends a connecting client retained messages of other clients' subscriptions.
            log.debug("%s: ignoring message on %s", self.settings.station_id, message.topic)

    def _take_confirmation(self, payload: bytes) -> None:
        try:
            message = Confirmation.parse(payload)
            if message.station_id != self.settings.station_id:
                raise MessageError(f"station_id {message.station_id!r} is not ours", payload)
        except MessageError as exc:
            self.confirmations_rejected += 1
            log.warning("%s: bad confirmation (%s): %r", self.settings.station_id, exc.reason, payload[:200])
            return
        confirmed, sightings = self.spool.confirm(message.batch_seqs)
        self.batches_confirmed += confirmed
        self.sightings_confirmed += sightings
        log.debug(
            "%s: %d of %d confirmed batches were spooled", self.settings.station_id, confirmed, len(message.batch_seqs)
        )

    def _take_hotlist(self, payload: bytes) -> None:
        if not payload:
            # An empty retained message only clears the broker's copy; keep what we know.
            log.info(
                "%s: hot list cleared on the broker; keeping version %d",
                self.settings.station_id,
                self.hotlist.version,
            )
            return
        s = self.settings
        try:
            message = check_hotlist(
                payload, self._hotlist_key, max_bytes=s.hotlist_max_bytes, max_tags=s.hotlist_max_tags
            )
        except HotlistRefused as exc:
            # The last good list stays: a bad one (forged, unsigned, oversized) changes nothing but this count.
            self.hotlist_rejected[exc.reason] += 1
            log.warning(
                "%s: hot list refused, keeping version %d (%s): %r",
                s.station_id,
                self.hotlist.version,
                exc,
                payload[:200],
            )
            return
        if self.hotlist.offer_message(message):
            self.spool.save_hotlist(self.hotlist.version, self.hotlist.tags, self.hotlist.eids)
            log.info(
                "%s: hot list version %d, %d tags, %d v2 eids in %d windows",
                s.station_id,
                message.version,
                len(self.hotlist.tags),
                self.hotlist.eid_count,
                len(self.hotlist.eids),
            )
        else:
            log.debug("%s: hot list version %d not newer than %d", s.station_id, message.version, self.hotlist.version)


def _stop_if_told() -> None:
    """Raise the cancellation of this task if one was requested but got lost on the way (say, while a failing
    connection was being closed): told to stop, we stop rather than go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
