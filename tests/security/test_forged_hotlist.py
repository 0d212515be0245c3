"""Issue 11, finding 1: anyone who can publish to the broker must not be able to blind or kill the stations.

The real backend (its app on the test's database, publishing the hot list on the test's real broker) reports bikes
stolen; a fleet of real gateways (one process, one event loop, fake radio modules on ptys) takes its lists. An
attacker who can write to the hot-list topic publishes retained hot lists of their own to the same broker: a huge
version, a version past 64 bits, a 300,000-tag list, unsigned and badly signed lists. Every one is refused, the
stations keep the last good list, go on flagging stolen chips, take the backend's next list, and none of them stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.ingest.consumer import Ingest
from backend.settings import BackendSettings
from bikeguard.services import Broker
from gateway.settings import GatewaySettings
from gateway.station import run_fleet
from protocol.messages import Alert, Hotlist, StationStatus, parse_tag, utcnow
from protocol.signing import public_key_of, read_signing_key, sign_hotlist
from protocol.topics import HOTLIST
from tests import factories
from tests.backend.conftest import Staff
from tests.gateway.harness import FakeModule, Watcher, beacon, fast_settings, watching

pytestmark = pytest.mark.anyio

PUBLIC_KEY = public_key_of(factories.SECRETS["hotlist_signing_key"].get_secret_value())


def _publish_retained(broker: Broker, payload: bytes) -> None:
    """Publish on the hot-list topic (retained, QoS 1) as anyone who can write to it: no longer anyone on the network
    (test_anonymous_broker.py), but a leaked backend password or a broker without our ACL; wait for the PUBACK."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2)
    client.username_pw_set(broker.username, broker.password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(HOTLIST, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def backend(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[Staff]:
    """The real backend app publishing its (signed) hot list on the test's broker, with signed-in staff."""
    # The broker is shared by the session: a list another test left retained must not be what the stations take.
    _publish_retained(broker, b"")
    settings = factories.settings(database_url, mqtt_url=broker.url, mqtt_client_id=f"sec-{topic_prefix}")
    try:
        with TestClient(create_app(settings, run_ingest=False)) as client:
            yield Staff(client, database_url)
    finally:
        _publish_retained(broker, b"")


def _report_stolen(staff: Staff) -> int:
    """Register a bike and report it stolen at the counter; its chip's id (the backend publishes a new list)."""
    done = staff.register()
    r = staff.clerk.post(f"/api/bikes/{done['bike']['bike_id']}/theft", json={})
    assert r.status_code == 201, r.text
    return parse_tag(done["bike"]["tag_id"])


class _Fleet:
    """A fleet of gateways run by the real `run_fleet`, each station on its own pty, seen only through the broker."""

    def __init__(
        self, broker: Broker, prefix: str, tmp_path: Path, count: int = 2, keys: list[str | None] | None = None
    ) -> None:
        self.broker = broker
        self.modules = [FakeModule() for _ in range(count)]
        self.settings: list[GatewaySettings] = [
            fast_settings(
                f"{prefix}s{i}",
                module.path,
                broker.url,
                tmp_path / f"s{i}.spool",
                status_interval_s=0.2,
                hotlist_public_key=PUBLIC_KEY if keys is None else keys[i],
            )
            for i, module in enumerate(self.modules)
        ]
        self.task: asyncio.Task[None] | None = None
        self.watchers: list[Watcher] = []

    @property
    def ids(self) -> list[str]:
        """The station ids."""
        return [s.station_id for s in self.settings]

    async def hotlist_versions(self) -> list[int | None]:
        """Each station's hot-list version as its latest status says (a status every 0.2 s)."""
        versions: list[int | None] = []
        for watcher in self.watchers:
            statuses = watcher.of("status")
            versions.append(StationStatus.parse(statuses[-1]).hotlist_version if statuses else None)
        return versions

    async def settle(self) -> None:
        """Long enough for every station to take a message and say so in its next status."""
        await asyncio.sleep(1.0)

    async def wait_for_version(self, version: int) -> None:
        """Until every station says it holds this hot-list version."""
        deadline = time.monotonic() + 20
        while await self.hotlist_versions() != [version] * len(self.ids):
            assert self.task is not None and not self.task.done(), "the gateway fleet stopped"
            assert time.monotonic() < deadline, f"stations hold {await self.hotlist_versions()}, not {version}"
            await asyncio.sleep(0.1)

    def close(self) -> None:
        """Unplug the fake modules."""
        for module in self.modules:
            module.close()


@contextlib.asynccontextmanager
async def _running(fleet: _Fleet) -> AsyncIterator[list[Watcher]]:
    """Run the fleet; yield a watcher on each station's topics; stop it cleanly."""
    async with contextlib.AsyncExitStack() as stack:
        watchers = [await stack.enter_async_context(watching(fleet.broker, sid)) for sid in fleet.ids]
        fleet.watchers = watchers
        fleet.task = asyncio.create_task(run_fleet(fleet.settings))
        try:
            yield watchers
        finally:
            fleet.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fleet.task
            fleet.close()


async def _flags(fleet: _Fleet, watchers: list[Watcher], tag_id: int) -> None:
    """Every station of the fleet raises a hot-list alert for this chip when it passes."""
    for module, watcher in zip(fleet.modules, watchers, strict=True):
        seen = len(watcher.of("alerts"))
        module.send(beacon(tag_id, rssi_dbm=-60))
        raws = await watcher.wait("alerts", seen + 1)
        alerts = [Alert.parse(raw) for raw in raws[seen:]]
        assert [(a.kind, parse_tag(a.tag_id)) for a in alerts] == [("hotlist_hit", tag_id)]


def _forged_v1(version: int, tags: list[str] | None = None) -> bytes:
    """An unsigned list in the form the stations took before lists were signed (the issue's payload)."""
    return orjson.dumps({"v": 1, "version": version, "issued_at": utcnow().isoformat(), "tags": tags or []})


async def test_forged_retained_hotlist_with_a_huge_version_is_refused_and_stolen_chips_are_still_flagged(
    backend: Staff, broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    stolen = _report_stolen(backend)
    fleet = _Fleet(broker, topic_prefix, tmp_path)
    async with _running(fleet) as watchers:
        [real] = set(await _until_equal(fleet))
        assert real is not None and real > 0
        await _flags(fleet, watchers, stolen)

        # The attack: a retained list with the largest 64-bit version, published by anyone.
        await asyncio.to_thread(_publish_retained, broker, _forged_v1(2**63 - 1))
        await fleet.settle()
        assert await fleet.hotlist_versions() == [real, real]
        await _flags(fleet, watchers, stolen)

        # The backend's next list (a lower version than the forged one) is still taken: a new theft is flagged.
        second = _report_stolen(backend)
        await fleet.wait_for_version(real + 1)
        await _flags(fleet, watchers, second)


async def _until_equal(fleet: _Fleet) -> list[int | None]:
    """The stations' hot-list versions once every station holds the same one (the backend's latest)."""
    deadline = time.monotonic() + 20
    while True:
        versions = await fleet.hotlist_versions()
        if len(set(versions)) == 1 and versions[0] not in (None, -1):
            return versions
        assert time.monotonic() < deadline, f"the stations never took the backend's hot list: {versions}"
        await asyncio.sleep(0.1)


async def test_hotlist_version_past_64_bits_does_not_kill_the_fleet(
    backend: Staff, broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    stolen = _report_stolen(backend)
    fleet = _Fleet(broker, topic_prefix, tmp_path)
    async with _running(fleet) as watchers:
        [real] = set(await _until_equal(fleet))

        # Before the fix: OverflowError in the spool, and the whole fleet process stopped.
        await asyncio.to_thread(_publish_retained, broker, _forged_v1(2**63))
        await fleet.settle()
        assert fleet.task is not None and not fleet.task.done(), "the gateway fleet stopped"
        assert await fleet.hotlist_versions() == [real, real]
        await _flags(fleet, watchers, stolen)
        # And the stations still deliver ordinary passages.
        for module, watcher in zip(fleet.modules, watchers, strict=True):
            module.send(beacon(0x00ABCDEF))
            await watcher.wait("sightings")


async def test_a_300000_tag_hotlist_is_refused_before_it_costs_memory(
    backend: Staff, broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    stolen = _report_stolen(backend)
    fleet = _Fleet(broker, topic_prefix, tmp_path, count=1)
    async with _running(fleet) as watchers:
        [real] = set(await _until_equal(fleet))
        tags = [f"{0x10000000 + i:08X}" for i in range(300_000)]
        huge = _forged_v1(real + 1, tags)
        assert len(huge) > 3_000_000
        tracemalloc.start()
        try:
            await asyncio.to_thread(_publish_retained, broker, huge)
            await fleet.settle()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert await fleet.hotlist_versions() == [real]
        await _flags(fleet, watchers, stolen)
        # The payload itself passes through this process twice (the publishing client here, the station's MQTT
        # reader); taking it cost the gateway about 50 MiB more before the fix.
        assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing the list"


async def test_unsigned_and_badly_signed_hotlists_are_refused(
    backend: Staff, broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    stolen = _report_stolen(backend)
    fleet = _Fleet(broker, topic_prefix, tmp_path)
    async with _running(fleet) as watchers:
        [real] = set(await _until_equal(fleet))
        newer = real + 1
        # Unsigned, as every list was before lists were signed: the stations took it.
        await asyncio.to_thread(_publish_retained, broker, _forged_v1(newer))
        await fleet.settle()
        assert await fleet.hotlist_versions() == [real, real]
        good = Hotlist(version=newer, issued_at=utcnow(), tags=[])
        genuine = sign_hotlist(good, read_signing_key(factories.SECRETS["hotlist_signing_key"].get_secret_value()))
        attacks = {
            "unsigned": good.to_json(),
            "signed by another key": sign_hotlist(good, Ed25519PrivateKey.generate()).to_json(),
            "tags changed after signing": genuine.model_copy(update={"tags": ["0BADCAFE"]}).to_json(),
            "version changed after signing": genuine.model_copy(update={"version": newer + 1}).to_json(),
        }
        for what, payload in attacks.items():
            await asyncio.to_thread(_publish_retained, broker, payload)
            await fleet.settle()
            assert await fleet.hotlist_versions() == [real, real], what
        await _flags(fleet, watchers, stolen)
        # The same list signed with the backend's key is taken: the refusals were the signature's doing.
        await asyncio.to_thread(_publish_retained, broker, genuine.to_json())
        await fleet.wait_for_version(newer)


async def test_the_installer_sees_a_station_whose_hot_list_lags(
    backend: Staff, ingest: Ingest, broker: Broker, topic_prefix: str, tmp_path: Path, database_url: str
) -> None:
    # Two stations, one provisioned without the backend's public key: it takes no list, so it flags no theft.
    fleet = _Fleet(broker, topic_prefix, tmp_path, keys=[PUBLIC_KEY, None])
    with psycopg.connect(database_url) as conn:
        for station_id in fleet.ids:
            factories.station(conn, station_id)
    _report_stolen(backend)
    async with _running(fleet):
        await fleet.settle()
        versions = await fleet.hotlist_versions()
        current = versions[0]
        assert current is not None and versions == [current, -1]

        def health() -> dict[str, dict[str, Any]]:
            r = backend.installer.get("/api/stations/health")
            assert r.status_code == 200, r.text
            return {s["station_id"]: s for s in r.json() if s["station_id"] in fleet.ids}

        await _until(lambda: all(s["hotlist_version"] is not None for s in health().values()), "statuses stored")
        # Within the grace period a lagging station is only late.
        assert [health()[sid]["hotlist_stale"] for sid in fleet.ids] == [False, False]
        # Past it (the lists were issued ten minutes ago), the station without the key is stale, and says why.
        with psycopg.connect(database_url) as conn:
            conn.execute("UPDATE hotlist_versions SET issued_at = issued_at - interval '10 minutes'")
        good, lagging = (health()[sid] for sid in fleet.ids)
        assert (good["hotlist_version"], good["hotlist_current"], good["hotlist_stale"]) == (current, current, False)
        assert (lagging["hotlist_version"], lagging["hotlist_stale"]) == (-1, True)
        assert any("BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY" in r for r in lagging["reasons"])
        assert "hotlist_behind" in lagging["reason_codes"]
        page = backend.installer.get("/installer")
        assert page.status_code == 200 and "bg-hotlist-stale" in page.text
        assert 'data-reason="hotlist_behind">hot list version -1 is behind the current' in page.text


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def test_a_production_backend_refuses_to_start_without_a_hotlist_signing_key() -> None:
    strong: dict[str, Any] = {
        k: f"{k}-" + "x" * 40 for k in ("id_encryption_key", "id_lookup_key", "certificate_signing_key")
    }
    strong["public_base_url"] = "https://bikes.example.gov"
    with pytest.raises(ValueError, match="BIKEGUARD_HOTLIST_SIGNING_KEY must be set"):
        BackendSettings(database_url="postgresql://x", environment="production", **strong)
    with pytest.raises(ValueError, match="BIKEGUARD_HOTLIST_SIGNING_KEY: the hot-list signing key must be 32 bytes"):
        BackendSettings(database_url="postgresql://x", environment="production", hotlist_signing_key="!", **strong)
    # Development makes a random key per process: no two installs share one by default.
    one, two = (
        BackendSettings(database_url="postgresql://x", environment="development").hotlist_signing_key for _ in range(2)
    )
    assert one is not None and two is not None and one.get_secret_value() != two.get_secret_value()
