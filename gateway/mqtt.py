"""The MQTT adapter: one paho client per connection, driven by the asyncio event loop.

Everything the gateway says over MQTT (the uplink, the self-test's broker steps) goes through `Connection`,
and paho's quirks stay in this module, fixed where they arise:

- paho connects (a blocking call) in a thread of the default executor and asks, from that thread, for its
  socket to be watched; the loop may get to that request after the socket was closed. `SocketWatch` watches
  a socket only while it is still open (`fileno() >= 0`), as Home Assistant's MQTT integration does, so a
  connection that drops at once is no loop error.
- Waits for the broker's answers (CONNACK, PUBACK, SUBACK, the goodbye) run under `asyncio.timeout`, which
  never drops a cancellation: a gateway told to stop stops, whether the broker answers, hangs or goes.
- A dropped connection fails every wait and ends the message stream with `ConnectionLost`; nobody has to read
  a library's private state to learn why.
- Every message goes to one callback. paho matches each message it receives against its per-topic callbacks
  (`message_callback_add`, which we do not use), and its matcher's recursive closure leaves a reference cycle per
  message: at 1,000 vendor stations some 9,000 objects of cyclic garbage a second, most of what the garbage
  collector found and so why it ran, on the event loop (docs/benchmarks.md, "Vendor bridge"): `one_callback`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from protocol.mqtt_socket import no_delay, one_callback
from protocol.topics import topic_matches

log = logging.getLogger(__name__)

_KEEPALIVE_CHECK_S = 1.0  # how often paho's keepalive (PINGREQ, a broker that stopped answering) is looked at


class MqttError(Exception):
    """The broker cannot be reached, refused us, did not answer in time, or the connection dropped."""


class ConnectRefused(MqttError):
    """The broker answered CONNACK with a refusal: `code` is the MQTT 5 reason code (134, 135 …)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"CONNACK {code}: {reason}")
        self.code = code
        self.reason = reason


class NoAnswer(MqttError):
    """The broker did not answer (CONNACK, PUBACK, SUBACK) within the connection's timeout."""


class ConnectionLost(MqttError):
    """The connection dropped, or is already closed."""


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for us when our connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS to the broker (mqtts://): the CA that signed the broker's certificate (None: the system's CAs), and the
    station's own certificate and key when the broker asks for one. The broker's name is always checked."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One message received on a subscription."""

    topic: str
    payload: bytes
    retain: bool = False

    def matches(self, subscription: str) -> bool:
        """True if the topic falls under a subscription filter (`+` and `#` wildcards)."""
        return topic_matches(subscription, self.topic)


class SocketWatch:
    """Has the event loop watch paho's socket; paho may ask from any thread, and a closed socket is not watched.

    `opened`, `closed`, `want_write` and `written` are paho's four socket callbacks. From the loop's own thread
    they act at once (paho closes the socket right after `closed` returns); from another thread (paho's connect
    in the executor) they run soon in the loop, by which time the socket may be closed: then there is nothing
    left to watch, and nothing to report.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, read: Callable[[], object], write: Callable[[], object]
    ) -> None:
        self.loop = loop
        self._read = read
        self._write = write
        self._thread = threading.get_ident()  # built in the loop's thread
        self._stopped = False
        self._watched: Any = None
        self._write_wanted = False  # paho has bytes it could not send yet
        self._writes_watched = False  # the loop watches for the socket to take more
        self._write_check_due = False

    def opened(self, sock: Any) -> None:
        """paho opened its socket: read when there is something to read."""
        no_delay(sock)
        self._in_loop(self._watch_reads, sock)

    def closed(self, sock: Any) -> None:
        """paho is about to close its socket: stop watching it."""
        self._in_loop(self._unwatch, sock)

    def want_write(self, sock: Any) -> None:
        """paho has bytes to send: write when the socket can take them.

        From the loop's thread the socket is watched only if paho still has bytes at the end of this turn of the
        loop: the Connection writes them at once (a publish, a PUBACK), and watching and unwatching the socket for
        each message cost two calls into the selector a message."""
        if threading.get_ident() != self._thread:
            self.loop.call_soon_threadsafe(self._watch_writes, sock)
            return
        self._write_wanted = True
        if not self._write_check_due:
            self._write_check_due = True
            self.loop.call_soon(self._watch_writes_if_wanted, sock)

    def written(self, sock: Any) -> None:
        """paho has nothing more to send."""
        self._write_wanted = False
        self._in_loop(self._unwatch_writes, sock)

    def stop(self) -> None:
        """Stop watching for good (the connection is over); a socket opened later is closed at once."""
        self._stopped = True
        if self._watched is not None:
            self._unwatch(self._watched)

    def _in_loop(self, action: Callable[[Any], None], sock: Any) -> None:
        if threading.get_ident() == self._thread:
            action(sock)
        else:
            self.loop.call_soon_threadsafe(action, sock)

    def _watch_reads(self, sock: Any) -> None:
        if sock.fileno() < 0:
            return  # closed before the loop got here: the connection is already over
        if self._stopped:
            sock.close()  # a connect given up on (timed out, cancelled) completed in its thread after all
            return
        self._watched = sock
        self.loop.add_reader(sock, self._read)

    def _watch_writes_if_wanted(self, sock: Any) -> None:
        self._write_check_due = False
        if self._write_wanted:
            self._watch_writes(sock)

    def _watch_writes(self, sock: Any) -> None:
        if sock.fileno() >= 0 and not self._stopped and not self._writes_watched:
            self.loop.add_writer(sock, self._write)
            self._writes_watched = True

    def _unwatch_writes(self, sock: Any) -> None:
        if sock.fileno() >= 0 and self._writes_watched:
            self.loop.remove_writer(sock)
        self._writes_watched = False

    def _unwatch(self, sock: Any) -> None:
        if sock is self._watched:
            self._watched = None
        if sock.fileno() >= 0:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        self._writes_watched = False


class Connection:
    """One MQTT 3.1.1 connection: `async with Connection(…) as mqtt:` connects, and leaves with a DISCONNECT.

    `timeout_s` bounds every wait for the broker: the CONNACK, each PUBACK and SUBACK, the goodbye.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = True,
        will: Will | None = None,
        keepalive_s: int = 30,
        timeout_s: float = 10.0,
        tls: Tls | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        client.connect_timeout = timeout_s
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if tls is not None:
            client.tls_set(
                ca_certs=str(tls.ca_file) if tls.ca_file else None,
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_ack
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        one_callback(client)
        self._client = client
        self._watch: SocketWatch | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._answers: dict[int, asyncio.Future[list[int]]] = {}
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._connack = asyncio.Event()
        self._refusal: ConnectRefused | None = None
        self._gone = asyncio.Event()
        self._lost: str | None = None  # why the connection dropped; None while up or after a clean close
        self._closing = False

    @property
    def endpoint(self) -> str:
        """host:port (no credentials)."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True from the CONNACK until the connection ends."""
        return self._connack.is_set() and self._refusal is None and not self._gone.is_set()

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        watch = self._watch = SocketWatch(loop, self._read, self._write)
        client = self._client
        client.on_socket_open = lambda _c, _u, sock: watch.opened(sock)
        client.on_socket_close = lambda _c, _u, sock: watch.closed(sock)
        client.on_socket_register_write = lambda _c, _u, sock: watch.want_write(sock)
        client.on_socket_unregister_write = lambda _c, _u, sock: watch.written(sock)
        try:
            async with asyncio.timeout(self.timeout_s):
                # connect() resolves the name and opens TCP, blocking: in the executor, as paho needs.
                await loop.run_in_executor(None, client.connect, self.host, self.port, self.keepalive_s)
                await self._connack.wait()
        except TimeoutError:
            self._abort()
            raise NoAnswer(f"no answer from {self.endpoint} in {self.timeout_s:g} s") from None
        except ssl.SSLError as exc:  # before OSError, of which it is one: say it is TLS, and why
            self._abort()
            raise MqttError(f"{self.endpoint}: TLS: {exc.reason or exc}: {exc}") from exc
        except OSError as exc:
            self._abort()
            raise MqttError(f"{self.endpoint}: {exc.strerror or exc}") from exc
        except BaseException:
            self._abort()
            raise
        if self._refusal is not None:
            self._abort()
            raise self._refusal
        if self._gone.is_set():
            self._abort()
            raise ConnectionLost(f"{self.endpoint} closed the connection before its CONNACK ({self._lost})")
        self._keepalive = loop.call_later(_KEEPALIVE_CHECK_S, self._check_keepalive)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Say DISCONNECT (so the broker keeps our will to itself) and wait, at most timeout_s, until it is sent."""
        try:
            if not self._gone.is_set():
                self._closing = True
                if self._client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.timeout_s):
                            await self._gone.wait()
        finally:
            self._abort()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish; with QoS 1, return once the broker's PUBACK came."""
        await self._answered(self.publish_nowait(topic, payload, qos=qos, retain=retain), "PUBACK")

    def publish_nowait(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[list[int]]:
        """Publish, and return at once: the future is done at the broker's PUBACK (already, for QoS 0) and fails
        with ConnectionLost if the connection ends first. Nothing bounds the wait: the caller does (timeout_s)."""
        self._check_up()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"cannot publish to {self.endpoint}: {paho.error_string(info.rc)}")
        if qos == 0:
            done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        answer = self._expect(info.mid)
        self._send_now()
        return answer

    async def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """Subscribe; the SUBACK's reason codes (0-2 granted, 128 or more refused)."""
        self._check_up()
        rc, mid = self._client.subscribe(topic, qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionLost(f"cannot subscribe on {self.endpoint}: {paho.error_string(rc)}")
        answer = self._expect(mid)
        self._send_now()
        return await self._answered(answer, "SUBACK")

    async def messages(self) -> AsyncIterator[Message]:
        """Messages on our subscriptions, until the connection ends (ConnectionLost if it dropped)."""
        while True:
            message = await self._inbox.get()
            if message is None:
                self._inbox.put_nowait(None)  # the end, for any other reader too
                if self._lost is not None:
                    raise ConnectionLost(f"connection to {self.endpoint} lost: {self._lost}")
                return
            yield message

    def _expect(self, mid: int) -> asyncio.Future[list[int]]:
        """The future of the broker's answer to message `mid` (registered before the message is written: a write
        that fails ends the connection, which fails every future registered)."""
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        if self._gone.is_set():
            future.set_exception(self._lost_error())
            return future
        self._answers[mid] = future
        future.add_done_callback(functools.partial(self._forget, mid))
        return future

    def _forget(self, mid: int, future: asyncio.Future[list[int]]) -> None:
        if self._answers.get(mid) is future:
            del self._answers[mid]

    async def _answered(self, answer: asyncio.Future[list[int]], what: str) -> list[int]:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await answer
        except TimeoutError:
            raise NoAnswer(f"no {what} from {self.endpoint} in {self.timeout_s:g} s") from None

    def _lost_error(self) -> ConnectionLost:
        return ConnectionLost(f"connection to {self.endpoint} {'lost: ' + self._lost if self._lost else 'closed'}")

    def _check_up(self) -> None:
        if self._gone.is_set():
            raise self._lost_error()

    # paho's callbacks: all in the loop's thread (paho reads, writes and checks keepalive only there).

    def _read(self) -> None:
        self._client.loop_read()
        # TLS decrypts whole records: bytes already decrypted wait in the SSL object, where no readiness event
        # will point at them. Read them now.
        sock = self._client.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.fileno() >= 0 and sock.pending():
            if self._client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._send_now()  # the PUBACKs of what was read

    def _write(self) -> None:
        self._client.loop_write()

    def _send_now(self) -> None:
        """Write what paho has queued now, in this turn of the loop rather than the next (what the socket will not
        take yet waits for the socket's writer)."""
        if self._client.want_write():
            self._client.loop_write()

    def _check_keepalive(self) -> None:
        if self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS and not self._gone.is_set():
            self._keepalive = asyncio.get_running_loop().call_later(_KEEPALIVE_CHECK_S, self._check_keepalive)

    def _on_connect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any) -> None:
        if reason.is_failure:
            self._refusal = ConnectRefused(reason.value, str(reason))
        self._connack.set()

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._end(None if self._closing or not reason.is_failure else str(reason))

    def _on_ack(self, _client: paho.Client, _userdata: Any, mid: int, _reason: ReasonCode, _props: Any) -> None:
        future = self._answers.get(mid)
        if future is not None and not future.done():
            future.set_result([])

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        future = self._answers.get(mid)
        if future is not None and not future.done():
            future.set_result([r.value for r in reasons])

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._inbox.put_nowait(Message(message.topic, bytes(message.payload), bool(message.retain)))

    def _end(self, lost: str | None) -> None:
        """The connection is over: wake whoever waits on it."""
        if self._gone.is_set():
            return
        self._lost = lost
        self._gone.set()
        self._connack.set()
        if self._keepalive is not None:
            self._keepalive.cancel()
        error = self._lost_error()
        for future in list(self._answers.values()):
            if not future.done():
                future.set_exception(error)
        self._inbox.put_nowait(None)

    def _abort(self) -> None:
        """Close whatever is left of the connection, at once and without a word to the broker."""
        self._closing = True
        if self._watch is not None:
            self._watch.stop()
        sock = self._client.socket()
        if sock is not None and sock.fileno() >= 0:
            sock.close()
        self._end(None)
