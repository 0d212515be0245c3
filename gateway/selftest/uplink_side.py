"""Self-test steps 6-8, the uplink side: the broker takes the station's credentials, its heartbeat comes back,
and (with --backend) the backend shows it online. The clock step borrows this side's connection and HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

from gateway.hotlist import HotlistRefused, RefusalReason, check_hotlist
from gateway.mqtt import Connection, ConnectRefused, MqttError, Will
from gateway.selftest.clock import Skew, skew_from_date_header
from gateway.selftest.report import StepResult
from gateway.selftest.settings import SelfTestSettings
from gateway.settings import GatewaySettings
from protocol.messages import Hotlist, StationStatus
from protocol.signing import read_public_key
from protocol.topics import HOTLIST, station_topic

# What the gateway would do with the retained hot list, and what the installer can do about it.
_REFUSED: dict[RefusalReason, str] = {
    "too_large": "it is larger than this station takes",
    "too_many_tags": "it holds more tags than this station takes",
    "invalid": "it is not a hot list this gateway can read",
    "no_public_key": "this station has no key to check its signature with",
    "unsigned": "it is not signed",
    "bad_signature": "its signature is not the backend's key this station was given",
}
_FORGED = (
    "either this station was given another backend's key (compare BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY with what "
    "`bikeguard station credentials` prints), or someone other than the backend published the list: only the "
    f"backend's MQTT user may write {HOTLIST} (the broker's ACL); tell the operator. The gateway keeps its last good"
    " list"
)
_REFUSED_ADVICE: dict[RefusalReason, str] = {
    "too_large": "raise BIKEGUARD_GATEWAY_HOTLIST_MAX_BYTES if the town's stolen list really is this large",
    "too_many_tags": "raise BIKEGUARD_GATEWAY_HOTLIST_MAX_TAGS if the town's stolen list really is this long",
    "invalid": "the backend published a hot list this gateway cannot read: are the backend and gateway versions "
    "compatible?",
    "no_public_key": "set BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY to the key `bikeguard station credentials` printed "
    "with this station's password: without it the gateway takes no hot list",
    "unsigned": _FORGED,
    "bad_signature": _FORGED,
}


@dataclass
class BrokerSession:
    """The self-test's one MQTT connection (or why there is none): what step 6 found, for steps 5 and 7."""

    result: StepResult
    client: Connection | None = None
    hotlist: Hotlist | None = None
    hotlist_bytes: int = 0
    hotlist_refused: HotlistRefused | None = None
    status_payloads: list[bytes] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)


class UplinkSide:
    """The uplink-side steps for one station; the MQTT connection lives as long as `stack`."""

    def __init__(
        self,
        settings: GatewaySettings,
        options: SelfTestSettings,
        stack: contextlib.AsyncExitStack,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = settings
        self.options = options
        self.stack = stack
        self.clock = clock
        self.status_topic = station_topic(settings.station_id, "status")
        self._session: BrokerSession | None = None
        self._connecting = asyncio.Lock()  # the runner connects early; the clock and broker steps ask again
        self._heartbeat: StationStatus | None = None
        # The gateway's own check of a hot list, with the key this station was provisioned with.
        self._hotlist_key = read_public_key(settings.hotlist_public_key) if settings.hotlist_public_key else None

    @property
    def client(self) -> Connection | None:
        """The connected MQTT client; None before the clock or broker step connected it, or if it could not."""
        return self._session.client if self._session is not None else None

    async def backend_clock(self) -> Skew | str:
        """Our clock against the backend's HTTP Date header, or why it could not be read."""
        sent_at = self.clock()
        reply = await self._get_stations()
        received_at = self.clock()
        if reply.date is None:
            return reply.error or "no Date header"
        return skew_from_date_header(sent_at, received_at, reply.date)

    # 6. broker

    async def broker(self) -> StepResult:
        """Step 6: TCP, CONNACK with the station's credentials, the retained hot list."""
        return (await self.session()).result

    async def session(self) -> BrokerSession:
        """The broker session, connected on first use (once, however many ask at the same time)."""
        async with self._connecting:
            if self._session is None:
                self._session = await self._connect()
        return self._session

    async def _connect(self) -> BrokerSession:
        s = self.settings
        host, port, username, password = s.mqtt_address
        endpoint = s.mqtt_endpoint
        timeout_s = self.options.connect_timeout_s
        data: dict[str, Any] = {"endpoint": endpoint, "username": username}
        unreachable = self._tcp_failure(host, port, await self._tcp_check(host, port, timeout_s), data)
        if unreachable is not None:
            return BrokerSession(unreachable)

        offline = StationStatus(station_id=s.station_id, state="offline")
        client = Connection(
            host,
            port,
            username=username,
            password=password,
            # Not the gateway's own id: taking it over would kick out a running gateway and its session.
            client_id=f"selftest-{s.station_id}-{secrets.token_hex(3)}",
            clean_session=True,
            will=Will(self.status_topic, offline.to_json(), qos=1, retain=True),
            keepalive_s=max(s.mqtt_keepalive_s, 5),
            timeout_s=timeout_s,
        )
        started = time.monotonic()
        try:
            await self.stack.enter_async_context(client)
        except ConnectRefused as exc:
            return BrokerSession(self._refusal(exc, username, data))
        except MqttError as exc:
            data["error"] = str(exc)
            return BrokerSession(
                StepResult(
                    "broker",
                    False,
                    f"TCP to {endpoint} works but no MQTT answer: {exc}",
                    "is this the broker's plain MQTT port? A TLS listener (usually 8883) or another service answers "
                    "differently: check the port in --mqtt",
                    data,
                )
            )
        data["connect_ms"] = round((time.monotonic() - started) * 1000, 1)
        session = BrokerSession(StepResult("broker", False, "connected"), client)
        collector = asyncio.create_task(self._collect(session), name="selftest mqtt")

        async def stop_collecting() -> None:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttError):
                await collector

        self.stack.push_async_callback(self._say_offline, session)
        self.stack.push_async_callback(stop_collecting)
        who = f"user '{username}'" if username else "anonymous"
        try:
            granted = await client.subscribe(HOTLIST, qos=1)
            await client.subscribe(self.status_topic, qos=1)
        except MqttError as exc:
            session.result = StepResult(
                "broker",
                False,
                f"connected as {who}, but subscribing failed: {exc}",
                "the broker dropped the connection: look at its log",
                data,
            )
            return session
        if _refused(granted):
            session.result = StepResult(
                "broker",
                False,
                f"connected as {who}, but the broker refused the hot-list subscription",
                f"the broker's ACL must let {who} read {HOTLIST}",
                data,
            )
            return session
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.hotlist_timeout_s):
                while session.hotlist is None and session.hotlist_refused is None:
                    session.received.clear()
                    await session.received.wait()
        connected = f"connected to {endpoint} as {who} in {data['connect_ms']:.0f} ms"
        if session.hotlist_refused is not None:
            refused = session.hotlist_refused
            data.update(hotlist_refusal=refused.reason, hotlist_error=refused.detail)
            session.result = StepResult(
                "broker",
                False,
                f"{connected}, but the gateway would refuse the retained hot list: {_REFUSED[refused.reason]}"
                f" ({refused.detail})",
                _REFUSED_ADVICE[refused.reason],
                data,
            )
        elif session.hotlist is None:
            session.result = StepResult(
                "broker",
                False,
                f"{connected}, but no hot list came within {self.options.hotlist_timeout_s:g} s",
                "the broker holds no retained hot list: the backend publishes it when it starts and when a theft "
                f"is reported; is the backend running against this broker? (Mosquitto also withholds it without "
                f"a word when its ACL does not let {who} read {HOTLIST})",
                data,
            )
        else:
            hotlist = session.hotlist
            tags = f"{len(hotlist.tags)} tag{'' if len(hotlist.tags) == 1 else 's'}"
            data.update(
                hotlist_version=hotlist.version,
                hotlist_tags=len(hotlist.tags),
                hotlist_bytes=session.hotlist_bytes,
                hotlist_issued_at=hotlist.issued_at.isoformat(),
            )
            session.result = StepResult(
                "broker",
                True,
                f"{connected}; hot list version {hotlist.version}, {tags} "
                f"({session.hotlist_bytes / 1024:.1f} kB), issued {hotlist.issued_at:%Y-%m-%d %H:%M:%S} UTC",
                data=data,
            )
        return session

    async def _collect(self, session: BrokerSession) -> None:
        assert session.client is not None
        async for message in session.client.messages():
            payload = message.payload
            if message.matches(HOTLIST) and payload and session.hotlist is None:
                session.hotlist_bytes = len(payload)
                s = self.settings
                try:
                    session.hotlist = check_hotlist(
                        payload, self._hotlist_key, max_bytes=s.hotlist_max_bytes, max_tags=s.hotlist_max_tags
                    )
                except HotlistRefused as exc:
                    session.hotlist_refused = exc
            elif message.matches(self.status_topic):
                session.status_payloads.append(payload)
            session.received.set()

    async def _tcp_check(self, host: str, port: int, timeout_s: float) -> OSError | None:
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(host, port)
        except OSError as exc:  # TimeoutError included
            return exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None

    def _tcp_failure(self, host: str, port: int, exc: OSError | None, data: dict[str, Any]) -> StepResult | None:
        if exc is None:
            return None
        data.update(refusal="unreachable", error=str(exc) or type(exc).__name__)
        if isinstance(exc, TimeoutError):
            return StepResult(
                "broker",
                False,
                f"unreachable: no answer from {host}:{port} in {self.options.connect_timeout_s:g} s",
                "the backhaul is down or a firewall/APN blocks the port: check the link LEDs or the LTE signal, "
                f"`ping {host}`, and that the broker's address in --mqtt is right",
                data,
            )
        if isinstance(exc, ConnectionRefusedError):
            return StepResult(
                "broker",
                False,
                f"unreachable: nothing listens on {host}:{port} (connection refused)",
                "the host answers but no broker listens on that port: check the port in --mqtt "
                "(Mosquitto's default is 1883) and that the broker runs",
                data,
            )
        if isinstance(exc, socket.gaierror):
            return StepResult(
                "broker",
                False,
                f"unreachable: cannot resolve the host name {host!r} ({exc.strerror})",
                f"check the host name in --mqtt and DNS on the backhaul: `getent hosts {host}`",
                data,
            )
        return StepResult(
            "broker",
            False,
            f"unreachable: {host}:{port}: {exc.strerror or exc}",
            "no route to the broker: check the backhaul (Ethernet link, LTE modem and APN) and `ip route`",
            data,
        )

    def _refusal(self, exc: ConnectRefused, username: str | None, data: dict[str, Any]) -> StepResult:
        code, reason = exc.code, exc.reason  # MQTT 5 reason codes, MQTT 3.1.1 ones included (5 is 135)
        data.update(connack=code, error=str(exc))
        user = f"user '{username}'" if username else "no username"
        if code == 134 or (code == 135 and username):
            # Mosquitto answers "not authorised" to a wrong password and to an unknown user alike.
            data["refusal"] = "bad_credentials"
            return StepResult(
                "broker",
                False,
                f"refused: bad credentials for {user} (CONNACK {code}: {reason})",
                f"the broker does not accept {user} with this password: check the user and password in --mqtt "
                "(mqtt://STATION_ID:PASSWORD@host:port) against the ones issued for this station; if the password "
                "is lost, have the backend issue a new one and reload the broker's password file",
                data,
            )
        if code in (135, 138):
            data["refusal"] = "not_authorised"
            if code == 138:
                return StepResult(
                    "broker",
                    False,
                    f"refused: not authorised, {user} is banned (CONNACK {code})",
                    "the broker's operator has banned this user or client: ask them",
                    data,
                )
            return StepResult(
                "broker",
                False,
                f"refused: not authorised with {user} (CONNACK {code}: {reason})",
                "the broker does not take anonymous connections: put the station's credentials in --mqtt "
                "(mqtt://STATION_ID:PASSWORD@host:port)",
                data,
            )
        data["refusal"] = "other"
        return StepResult(
            "broker",
            False,
            f"refused by the broker: CONNACK {code}: {reason}",
            "look at the broker's log for why it refused this client",
            data,
        )

    async def _say_offline(self, session: BrokerSession) -> None:
        """Leave the station offline: the self-test is not the gateway, and the gateway says online itself."""
        if self._heartbeat is None or session.client is None:
            return
        offline = StationStatus(station_id=self.settings.station_id, state="offline", sent_at=self.clock())
        with contextlib.suppress(MqttError, TimeoutError):
            async with asyncio.timeout(2.0):
                await session.client.publish(self.status_topic, offline.to_json(), qos=1, retain=True)

    # 7. heartbeat

    async def heartbeat(self, noise_floor_dbm: int | None) -> StepResult:
        """Step 7: publish the retained online status and read it back (proves the ACL lets us publish)."""
        session = await self.session()
        assert session.client is not None
        s = self.settings
        sent_at = self.clock()
        status = StationStatus(
            station_id=s.station_id,
            state="online",
            sent_at=sent_at,
            firmware=s.firmware,
            noise_floor_dbm=noise_floor_dbm,
            hotlist_version=session.hotlist.version if session.hotlist else None,
        )
        payload = status.to_json()
        _, _, username, _ = s.mqtt_address
        data: dict[str, Any] = {"topic": self.status_topic, "sent_at": sent_at.isoformat()}
        seen = len(session.status_payloads)
        started = time.monotonic()
        try:
            await session.client.publish(self.status_topic, payload, qos=1, retain=True)
        except MqttError as exc:
            data["error"] = str(exc)
            return StepResult(
                "heartbeat", False, f"publishing the status failed: {exc}", self._acl_advice(username), data
            )
        self._heartbeat = status
        came_back = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.heartbeat_timeout_s):
                while not (came_back := payload in session.status_payloads[seen:]):
                    session.received.clear()
                    await session.received.wait()
        if not came_back:
            return StepResult(
                "heartbeat",
                False,
                f"the broker took our online status but did not send it back within "
                f"{self.options.heartbeat_timeout_s:g} s",
                self._acl_advice(username),
                data,
            )
        round_trip_ms = (time.monotonic() - started) * 1000
        data["round_trip_ms"] = round(round_trip_ms, 1)
        return StepResult(
            "heartbeat",
            True,
            f"online status on {self.status_topic} read back from the broker in {round_trip_ms:.0f} ms",
            data=data,
        )

    def _acl_advice(self, username: str | None) -> str:
        sid = self.settings.station_id
        advice = (
            f"the broker's ACL or the station id is wrong: Mosquitto accepts a publish its ACL forbids and "
            f"drops it without a word. The ACL must let MQTT user '{username}' write and read "
            f"{self.status_topic}"
        )
        if username and username != sid:
            advice += (
                f"; here the MQTT user '{username}' differs from --station-id '{sid}': a station may publish "
                "only under its own id, so use the station id its credentials were issued for"
            )
        else:
            advice += (
                "; regenerate the broker's acl_file with this station in it (backend.provisioning.acl_file) "
                "and reload the broker"
            )
        return advice

    # 8. backend

    async def backend(self) -> StepResult:
        """Step 8: the backend lists this station online with the heartbeat of step 7."""
        url = self.options.backend_url
        assert url is not None and self._heartbeat is not None and self._heartbeat.sent_at is not None
        sid = self.settings.station_id
        sent_at = self._heartbeat.sent_at
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.backend_timeout_s
        data: dict[str, Any] = {"url": url}
        last = "not listed"
        while True:
            reply = await self._get_stations()
            data["http_status"] = reply.status
            if reply.error is not None:
                return StepResult(
                    "backend",
                    False,
                    f"{url} not reachable: {reply.error}",
                    "check the --backend URL and that the backend runs; the station itself does "
                    "not need it, only this check does",
                    data,
                )
            if reply.status == 401:
                return StepResult(
                    "backend",
                    False,
                    "the backend refused the token (HTTP 401)",
                    f"sign in again as an installer (POST {url}/api/auth/login with token_in_body) and pass the new "
                    "token with --token: tokens expire",
                    data,
                )
            if reply.status == 403:
                return StepResult(
                    "backend",
                    False,
                    "this account may not list stations (HTTP 403)",
                    "use an installer's (or an admin's) account",
                    data,
                )
            if reply.status != 200 or not isinstance(reply.body, list):
                return StepResult(
                    "backend",
                    False,
                    f"unexpected answer from {url}/api/stations: HTTP {reply.status}",
                    f"look at the backend's log and GET {url}/api/health/ingest (signed in)",
                    data,
                )
            entry = next((e for e in reply.body if isinstance(e, dict) and e.get("station_id") == sid), None)
            if entry is not None:
                last = f"state '{entry.get('state')}'"
                if entry.get("state") == "online" and _status_sent_at(entry) == sent_at:
                    return self._backend_passed(entry, sent_at, data)
            if loop.time() >= deadline:
                break
            await asyncio.sleep(min(self.options.backend_poll_s, max(deadline - loop.time(), 0)))
        if last == "not listed":
            return StepResult(
                "backend",
                False,
                f"the backend does not know station {sid}",
                f"register the station first (PUT {url}/api/stations with its id, name and "
                "position), then run the self-test again",
                data,
            )
        return StepResult(
            "backend",
            False,
            f"the backend did not record our heartbeat within {self.options.backend_timeout_s:g} s ({last})",
            f"the backend's MQTT ingest is not connected to this broker, or falls behind: check GET "
            f"{url}/api/health/ingest (signed in) and the backend's log",
            data,
        )

    def _backend_passed(self, entry: dict[str, Any], sent_at: datetime, data: dict[str, Any]) -> StepResult:
        value = f"the backend shows {self.settings.station_id} online with our heartbeat"
        advice = ""
        received = entry.get("last_status_at")
        with contextlib.suppress(TypeError, ValueError):
            delay_s = (datetime.fromisoformat(received) - sent_at).total_seconds()  # type: ignore[arg-type]
            data["received_after_s"] = round(delay_s, 3)
            value += f" (received {delay_s:.1f} s after we sent it, by its clock)"
            if abs(delay_s) > self.options.clock_max_skew_s:
                advice = (
                    f"the backend's receive time is {delay_s:+.1f} s from our send time: a clock skew (see "
                    "the clock step) or a slow ingest"
                )
        return StepResult("backend", True, value, advice, data)

    async def _get_stations(self) -> _HttpReply:
        url = f"{self.options.backend_url}/api/stations"
        token = self.options.backend_token
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        timeout_s = self.options.connect_timeout_s
        return await asyncio.to_thread(_http_get, url, headers, timeout_s)


@dataclass(frozen=True, slots=True)
class _HttpReply:
    status: int | None = None
    body: Any = None
    date: datetime | None = None
    error: str | None = None


def _http_get(url: str, headers: dict[str, str], timeout_s: float) -> _HttpReply:
    """GET url (blocking; run in a thread): status, JSON body, Date header, or the error."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, raw, date = response.status, response.read(), response.headers.get("Date")
    except urllib.error.HTTPError as exc:
        status, raw, date = exc.code, exc.read(), exc.headers.get("Date")
    except (urllib.error.URLError, OSError) as exc:
        return _HttpReply(error=str(getattr(exc, "reason", exc)))
    body = None
    with contextlib.suppress(orjson.JSONDecodeError):
        body = orjson.loads(raw)
    parsed = None
    with contextlib.suppress(TypeError, ValueError):
        parsed = parsedate_to_datetime(date) if date else None
    return _HttpReply(status, body, parsed)


def _status_sent_at(entry: dict[str, Any]) -> datetime | None:
    status = entry.get("status")
    if not isinstance(status, dict) or not isinstance(status.get("sent_at"), str):
        return None
    try:
        return datetime.fromisoformat(status["sent_at"])
    except ValueError:
        return None


def _refused(granted: Any) -> bool:
    """True if a SUBACK refused the subscription (0x80, or a reason code of 128 or more)."""
    for code in granted if isinstance(granted, list | tuple) else [granted]:
        value = getattr(code, "value", code)
        if isinstance(value, int) and value >= 0x80:
            return True
    return False
