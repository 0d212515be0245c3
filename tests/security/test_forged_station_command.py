"""Issue 11: what the backend tells a station to do is signed, and nobody else who can publish to the broker can
make a station do anything.

The real backend app (on the test's database, publishing on the test's real broker) sends commands through its API
(`POST /api/stations/{id}/commands/{name}`); a real gateway (fake radio module on a pty) takes them from the broker.
Whoever can write to the station's commands topic (a broker without our ACL, a leaked backend password) publishes
commands of their own there: unsigned, signed with another key, signed for another station, expired, a captured
genuine one replayed (also after the station restarted), garbage and an oversized one. Each is refused and counted
by reason, the station does nothing it was not told by the backend, and it goes on working: it still delivers
passages and still obeys the backend's next command.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import aiomqtt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from backend.api.app import create_app
from bikeguard.services import Broker
from gateway.station import Station
from protocol.messages import SightingBatch, StationCommand, StationStatus, utcnow
from protocol.signing import public_key_of, read_signing_key, sign
from protocol.topics import command_topic, station_topic
from tests import factories
from tests.backend.conftest import Staff
from tests.gateway.harness import FakeModule, beacon, eventually, fast_settings, mqtt_client, running

pytestmark = pytest.mark.anyio

SIGNING_KEY = factories.SECRETS["hotlist_signing_key"].get_secret_value()
PUBLIC_KEY = public_key_of(SIGNING_KEY)


@pytest.fixture
def backend(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[Staff]:
    """The real backend app, publishing commands on the test's broker, with signed-in staff."""
    settings = factories.settings(database_url, mqtt_url=broker.url, mqtt_client_id=f"cmd-{topic_prefix}")
    with TestClient(create_app(settings, run_ingest=False)) as client:
        yield Staff(client, database_url)


class Listener:
    """What one station publishes (status, sightings) and the commands published to it, by topic."""

    def __init__(self, client: aiomqtt.Client, station_id: str) -> None:
        self.client = client
        self.status_topic = station_topic(station_id, "status")
        self.sightings_topic = station_topic(station_id, "sightings")
        self.commands = command_topic(station_id, "+")
        self.messages: list[tuple[str, bytes]] = []

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on one topic (a filter with `+` for the commands)."""
        return [p for t, p in self.messages if aiomqtt.Topic(t).matches(topic)]

    def online_statuses(self) -> list[StationStatus]:
        """The station's online statuses so far (its last will, offline, is not one)."""
        statuses = (StationStatus.parse(p) for p in self.on(self.status_topic))
        return [s for s in statuses if s.state == "online"]

    async def collect(self) -> None:
        """Record every message, in arrival order."""
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.messages.append((str(message.topic), message.payload))

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish as anyone on the broker's network could."""
        await self.client.publish(topic, payload, qos=1)


@contextlib.asynccontextmanager
async def listening(broker: Broker, station_id: str) -> AsyncIterator[Listener]:
    """Subscribe to the station's status, sightings and commands topics."""
    async with mqtt_client(broker) as client:
        listener = Listener(client, station_id)
        for topic in (listener.status_topic, listener.sightings_topic, listener.commands):
            await client.subscribe(topic, qos=1)
        task = asyncio.create_task(listener.collect())
        try:
            yield listener
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _station(broker: Broker, station_id: str, module: FakeModule, spool: Path, database_url: str) -> Station:
    """A gateway for a registered station, given the backend's public key; it publishes its status only when it
    connects (and when told to), so every later status is a command's doing."""
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station_id)
    settings = fast_settings(
        station_id, module.path, broker.url, spool, hotlist_public_key=PUBLIC_KEY, status_interval_s=600
    )
    return Station(settings)


async def _send(staff: Staff, station_id: str, name: str) -> dict[str, object]:
    """The installer sends a command through the API."""
    r = await asyncio.to_thread(staff.installer.post, f"/api/stations/{station_id}/commands/{name}")
    assert r.status_code == 202, r.text
    return r.json()  # type: ignore[no-any-return]


def _command(station_id: str, *, seq: int, issued_ago_s: float = 0, ttl_s: float = 300) -> StationCommand:
    """A `status` command with the given seq and lifetime, not yet signed."""
    issued_at = utcnow() - timedelta(seconds=issued_ago_s)
    return StationCommand(
        station_id=station_id,
        name="status",
        seq=seq,
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=ttl_s),
    )


def _refused(station: Station) -> dict[str, int]:
    return station.figures().commands_refused


def _done(station: Station) -> dict[str, int]:
    return station.figures().commands_done


async def test_forged_commands_are_refused_and_counted_and_the_station_keeps_working(
    backend: Staff, broker: Broker, topic_prefix: str, tmp_path: Path, database_url: str
) -> None:
    sid, other = f"{topic_prefix}a", f"{topic_prefix}b"
    module = FakeModule()
    station = _station(broker, sid, module, tmp_path / "a.spool", database_url)
    topic = command_topic(sid, "status")
    backend_key = read_signing_key(SIGNING_KEY)
    async with listening(broker, sid) as listener, running(station):
        await eventually(lambda: len(listener.online_statuses()) == 1, what="the status on connecting")

        # The backend's command is acted on: a status now.
        sent = await _send(backend, sid, "status")
        await eventually(lambda: len(listener.online_statuses()) == 2, what="the status the command asked for")
        # Counted once the station's publish is acknowledged, which may be a moment after the listener has it.
        await eventually(lambda: _done(station) == {"status": 1}, what="the command counted as done")
        [genuine] = listener.on(listener.commands)
        assert StationCommand.parse(genuine).seq == sent["seq"]

        seq = int(str(sent["seq"])) + 1000  # newer than anything taken: a replay is not what refuses these
        attacks: dict[str, bytes] = {
            "unsigned": _command(sid, seq=seq).to_json(),
            "bad_signature": sign(_command(sid, seq=seq), Ed25519PrivateKey.generate()).to_json(),
            "other_station": sign(_command(other, seq=seq), backend_key).to_json(),
            "expired": sign(_command(sid, seq=seq, issued_ago_s=600, ttl_s=300), backend_key).to_json(),
            "replayed": genuine,
            "invalid": b"\xff\x00 not a command {",
            "too_large": b'{"v":1,"pad":"' + b"x" * 100_000 + b'"}',
        }
        for reason, payload in attacks.items():
            await listener.publish(topic, payload)
            await eventually(lambda r=reason: _refused(station).get(r) == 1, what=f"the {reason} command refused")
        # Signed by the backend, but its signature copied onto another command: refused too.
        forged = _command(sid, seq=seq).model_copy(update={"signature": StationCommand.parse(genuine).signature})
        await listener.publish(topic, forged.to_json())
        await eventually(lambda: _refused(station).get("bad_signature") == 2, what="a borrowed signature refused")

        await asyncio.sleep(0.5)
        assert len(listener.online_statuses()) == 2, "a refused command made the station publish"
        assert _done(station) == {"status": 1}

        # The station keeps working: passages still go out, and the backend's next command is obeyed.
        module.send(beacon(0x00ABCDEF))
        await eventually(lambda: listener.on(listener.sightings_topic), what="a sightings batch")
        await _send(backend, sid, "status")
        await eventually(lambda: len(listener.online_statuses()) == 3, what="the next command's status")
        await eventually(lambda: _done(station) == {"status": 2}, what="the next command counted as done")
    module.close()


async def test_a_captured_command_is_refused_after_the_station_restarts(
    backend: Staff, broker: Broker, topic_prefix: str, tmp_path: Path, database_url: str
) -> None:
    sid = f"{topic_prefix}a"
    module = FakeModule()
    spool = tmp_path / "a.spool"
    async with listening(broker, sid) as listener:
        station = _station(broker, sid, module, spool, database_url)
        async with running(station):
            await eventually(lambda: len(listener.online_statuses()) == 1, what="the status on connecting")
            await _send(backend, sid, "status")
            await eventually(lambda: _done(station) == {"status": 1}, what="the command acted on")
        [captured] = listener.on(listener.commands)

        # The last command's seq is kept in the spool: a new process refuses the captured command all the same.
        station = _station(broker, sid, module, spool, database_url)
        async with running(station):
            # One on connecting, one for the command, one on connecting again.
            await eventually(lambda: len(listener.online_statuses()) == 3, what="the status on reconnecting")
            await listener.publish(command_topic(sid, "status"), captured)
            await eventually(lambda: _refused(station) == {"replayed": 1}, what="the replay refused")
            await asyncio.sleep(0.3)
            assert len(listener.online_statuses()) == 3
            assert _done(station) == {}
    module.close()


async def test_a_signed_resend_command_sends_unconfirmed_batches_again(
    backend: Staff, broker: Broker, topic_prefix: str, tmp_path: Path, database_url: str
) -> None:
    sid = f"{topic_prefix}a"
    module = FakeModule()
    station = _station(broker, sid, module, tmp_path / "a.spool", database_url)
    # Nobody confirms the batch here, and the station's own resend would come only after ten minutes.
    station.settings = station.settings.model_copy(update={"confirm_timeout_s": 600.0})
    async with listening(broker, sid) as listener, running(station):
        module.send(beacon(0x00C0FFEE))
        [first] = await eventually(lambda: listener.on(listener.sightings_topic), what="a sightings batch")
        seq = SightingBatch.parse(first).batch_seq
        await eventually(lambda: station.spool is not None and station.spool.unconfirmed == 1, what="batch sent")
        await _send(backend, sid, "resend")
        again = await eventually(lambda: listener.on(listener.sightings_topic)[1:], what="the batch sent again")
        assert SightingBatch.parse(again[0]).batch_seq == seq
        assert _done(station) == {"resend": 1}
    module.close()


def test_only_installers_and_admins_send_commands_and_each_is_audited(backend: Staff, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        sid = factories.station(conn, "cmd-audit-1")
    for caller in (backend.clerk, backend.police, backend.anonymous):
        assert caller.post(f"/api/stations/{sid}/commands/status").status_code in (401, 403)
    assert backend.installer.post("/api/stations/no-such-station/commands/status").status_code == 404
    assert backend.installer.post(f"/api/stations/{sid}/commands/reboot").status_code == 422
    first = backend.installer.post(f"/api/stations/{sid}/commands/status")
    second = backend.admin.post(f"/api/stations/{sid}/commands/resend")
    assert (first.status_code, second.status_code) == (202, 202), (first.text, second.text)
    assert second.json()["seq"] > first.json()["seq"]
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT actor, action, detail FROM audit_log WHERE subject = %s ORDER BY audit_id", (f"station:{sid}",)
        ).fetchall()
    assert [(r[1], r[2]["command"], r[2]["seq"]) for r in rows] == [
        ("station.command", "status", first.json()["seq"]),
        ("station.command", "resend", second.json()["seq"]),
    ]
