"""Stolen v2 chips on the hot list: by their ephemeral ids for the windows ahead, never by tag id, renewed as the
windows pass; read from the real broker as a gateway reads it, its signature checked with the station's public key."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from backend.api.app import create_app
from backend.chip_keys import active_v2_keys
from backend.hotlist import eid_windows
from backend.settings import BackendSettings
from bikeguard.services import Broker, start_broker
from protocol.beacon_v2 import WINDOW_S, ChipKey, window_of
from protocol.ids import parse_tag
from protocol.messages import HOTLIST_EID_WINDOWS_MAX, Hotlist
from protocol.signing import SignatureError, generate_signing_key, read_public_key, sign_hotlist, verify_hotlist
from tests import factories
from tests.backend.conftest import Caller, Staff
from tests.backend.counter_cable import CounterCable, counter_cable
from tests.backend.test_api import HotlistWatcher
from tests.backend.test_chip_keys_never_appear import _found, _needles
from tests.backend.test_ingest import wait_until

_REPORT = {"place": "Gu Lou", "circumstances": "lock cut", "police_report": "HZ-110-17"}


class MovableClock:
    """Unix seconds that stand still in the middle of a window until the test moves them on; and the test's own
    hot-list signing key."""

    def __init__(self) -> None:
        self.now_s = window_of(time.time()) * WINDOW_S + WINDOW_S / 2
        self.signing_key = SecretStr(generate_signing_key())

    def __call__(self) -> float:
        return self.now_s

    def next_window(self) -> int:
        """Move to the middle of the next window; returns its number."""
        self.now_s += WINDOW_S
        return window_of(self.now_s)


class GatewayListener(HotlistWatcher):
    """Subscribes to the hot list as a gateway does and keeps every payload (raw) the broker delivers."""

    def version(self, version: int, settings: BackendSettings) -> bytes:
        """The payload of this version signed with this test's key (the shared broker may also hold an earlier test's
        list, of a database made from the same template, so of the same version)."""
        public_key = read_public_key(settings.hotlist_public_key)

        def ours(payload: bytes) -> bool:
            message = Hotlist.parse(payload)
            with contextlib.suppress(SignatureError):
                verify_hotlist(message, public_key)
                return message.version == version
            return False

        def found() -> bytes | None:
            with self._lock:
                return next((p for p in self.payloads if ours(p)), None)

        wait_until(lambda: found() is not None)
        payload = found()
        assert payload is not None
        return payload


def _latest_version(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return int(conn.execute("SELECT max(version) FROM hotlist_versions").fetchone()[0])  # type: ignore[index]


def _versions(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        return int(conn.execute("SELECT count(*) FROM hotlist_versions").fetchone()[0])  # type: ignore[index]


def _checked(payload: bytes, settings: BackendSettings) -> Hotlist:
    """The list as a station takes it: parsed strictly and signed with the backend's key."""
    message = Hotlist.parse(payload)
    verify_hotlist(message, read_public_key(settings.hotlist_public_key))
    return message


def _fit_v2(staff: Staff, cable: CounterCable) -> tuple[dict[str, Any], bytes]:
    """A v2 chip fitted at the counter: the registration and the chip's key as the backend keeps it."""
    tag = factories.tag()
    cable.put(parse_tag(tag))
    registration = staff.register(tag_id=tag, chip_kind="v2")
    vault = staff.client.app.state.registry.vault  # type: ignore[attr-defined]
    with psycopg.connect(staff.database_url) as conn:
        [key] = [k for t, k in active_v2_keys(conn, vault) if t == parse_tag(tag)]
    return registration, key


def _steal(staff: Staff, registration: dict[str, Any]) -> Caller:
    owner = staff.owner_of(registration)
    r = owner.post(f"/api/bikes/{registration['bike']['bike_id']}/theft", json=_REPORT)
    assert r.status_code == 201, r.text
    return owner


@contextlib.contextmanager
def _backend(
    database_url: str, broker: Broker, name: str, cable: CounterCable, clock: MovableClock, **overrides: Any
) -> Iterator[tuple[TestClient, BackendSettings]]:
    """An API process (no ingest) on the test's database and broker, on the movable clock, signing with the clock's
    key (one per test: the tests' settings otherwise share one)."""
    settings = factories.settings(
        database_url,
        hotlist_signing_key=clock.signing_key,
        mqtt_url=broker.url,
        mqtt_client_id=name,
        counter_programmer_url=cable.port,
        hotlist_renew_check_s=0.05,
        **overrides,
    )
    with TestClient(create_app(settings, run_ingest=False, clock=clock)) as client:
        yield client, settings


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[CounterCable]:
    """The fitting counter's programming cable."""
    with counter_cable(tmp_path) as c:
        yield c


def test_stolen_v2_chip_is_listed_by_its_eids_ahead_never_by_tag_id_and_leaves_when_recovered(
    database_url: str, broker: Broker, topic_prefix: str, cable: CounterCable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = MovableClock()
    listener = GatewayListener(broker)
    try:
        with _backend(database_url, broker, f"api-{topic_prefix}", cable, clock) as (client, settings):
            staff = Staff(client, database_url)
            v2, key = _fit_v2(staff, cable)
            v1 = staff.register()
            _steal(staff, v1)
            owner = _steal(staff, v2)
            payload = listener.version(_latest_version(database_url), settings)
            hotlist = _checked(payload, settings)

            now = window_of(clock())
            windows = list(range(now - 1, now - 1 + HOTLIST_EID_WINDOWS_MAX))
            chip = ChipKey(key)
            assert sorted(hotlist.eids_by_window()) == windows
            for window, eids in hotlist.eids_by_window().items():
                assert eids == [chip.eid(window)]
            # The v1 chip by its tag id; the v2 chip's tag id nowhere in the list, nor its key.
            assert hotlist.tags == [v1["bike"]["tag_id"]]
            assert v2["bike"]["tag_id"].encode() not in payload.upper()
            assert _found(payload, _needles(key)) == []
            assert _found(payload.lower(), {"hex": key.hex().encode()}) == []

            r = owner.post(f"/api/bikes/{v2['bike']['bike_id']}/recovered")
            assert r.status_code == 200, r.text
            recovered = listener.version(_latest_version(database_url), settings)
            assert b'"eids"' not in recovered
            assert _checked(recovered, settings).tags == [v1["bike"]["tag_id"]]
    finally:
        listener.close()
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert "by eids" in logged  # the issuing was logged, by its counts
    assert _found(logged.encode(), _needles(key)) == []
    assert _found(logged.lower().encode(), {"hex": key.hex().encode()}) == []


def test_list_is_renewed_once_per_window_by_several_api_processes_while_a_v2_chip_is_stolen(
    database_url: str, broker: Broker, topic_prefix: str, cable: CounterCable
) -> None:
    clock = MovableClock()
    listener = GatewayListener(broker)
    try:
        with (
            _backend(database_url, broker, f"api-{topic_prefix}", cable, clock) as (client, settings),
            _backend(database_url, broker, f"api2-{topic_prefix}", cable, clock),
        ):
            staff = Staff(client, database_url)
            v2, key = _fit_v2(staff, cable)
            _steal(staff, v2)
            stolen = _latest_version(database_url)
            listener.version(stolen, settings)
            issued = _versions(database_url)
            chip = ChipKey(key)
            for _ in range(2):
                window = clock.next_window()
                wait_until(lambda last=stolen: _latest_version(database_url) > last)
                renewed = _checked(listener.version(_latest_version(database_url), settings), settings)
                assert sorted(renewed.eids_by_window()) == eid_windows(clock(), HOTLIST_EID_WINDOWS_MAX)
                assert renewed.eids_by_window()[window + HOTLIST_EID_WINDOWS_MAX - 2] == [
                    chip.eid(window + HOTLIST_EID_WINDOWS_MAX - 2)
                ]
                # Both processes woke many times in this window (every 0.05 s): one new list between them.
                time.sleep(0.5)
                assert _versions(database_url) == issued + 1
                issued += 1
                stolen = renewed.version
    finally:
        listener.close()


def test_list_without_a_v2_chip_is_byte_for_byte_the_old_one_and_not_renewed(
    database_url: str, broker: Broker, topic_prefix: str, cable: CounterCable
) -> None:
    clock = MovableClock()
    listener = GatewayListener(broker)
    try:
        with _backend(database_url, broker, f"api-{topic_prefix}", cable, clock) as (client, settings):
            staff = Staff(client, database_url)
            v1 = staff.register()
            _steal(staff, v1)
            payload = listener.version(_latest_version(database_url), settings)
            listed = _checked(payload, settings)
            old = Hotlist(version=listed.version, issued_at=listed.issued_at, tags=[v1["bike"]["tag_id"]])
            assert payload == sign_hotlist(old, settings.hotlist_key).to_json()
            assert set(orjson.loads(payload)) == {"v", "version", "issued_at", "tags", "signature"}
            issued = _versions(database_url)
            clock.next_window()
            time.sleep(0.5)  # ten renewal checks in the new window
            assert _versions(database_url) == issued
    finally:
        listener.close()


def test_a_recovered_v2_chip_leaves_a_list_that_is_then_renewed_no_more(
    database_url: str, broker: Broker, topic_prefix: str, cable: CounterCable
) -> None:
    clock = MovableClock()
    listener = GatewayListener(broker)
    try:
        with _backend(database_url, broker, f"api-{topic_prefix}", cable, clock, hotlist_eid_windows=4) as (
            client,
            settings,
        ):
            staff = Staff(client, database_url)
            v2, _ = _fit_v2(staff, cable)
            owner = _steal(staff, v2)
            assert len(_checked(listener.version(_latest_version(database_url), settings), settings).eids or {}) == 4
            # Recovered, and the process that recorded it died before it published a list: the next window's renewal
            # takes the chip's eids off all the same, as the list out there still names it.
            with psycopg.connect(database_url) as conn:
                conn.execute("UPDATE theft_reports SET recovered_at = now() WHERE recovered_at IS NULL")
            before = _latest_version(database_url)
            clock.next_window()
            wait_until(lambda: _latest_version(database_url) > before)
            assert b'"eids"' not in listener.version(_latest_version(database_url), settings)
            issued = _versions(database_url)
            clock.next_window()
            time.sleep(0.5)
            assert _versions(database_url) == issued
            assert owner.get(f"/api/bikes/{v2['bike']['bike_id']}").status_code == 200
    finally:
        listener.close()


def test_eid_windows_are_the_one_before_the_current_one_and_those_ahead() -> None:
    now_s = 1_795_952_566.0
    assert eid_windows(now_s, 4) == [window_of(now_s) - 1, window_of(now_s), window_of(now_s) + 1, window_of(now_s) + 2]
    for count in (2, HOTLIST_EID_WINDOWS_MAX + 1):
        with pytest.raises(ValueError, match="3 to 16 windows"):
            eid_windows(now_s, count)


def test_a_list_renewed_while_the_broker_is_away_reaches_it_when_it_is_back(
    database_url: str, topic_prefix: str, cable: CounterCable
) -> None:
    clock = MovableClock()
    broker = start_broker("amqtt")  # a broker of this test's own, to stop and start again
    try:
        with _backend(database_url, broker, f"api-{topic_prefix}", cable, clock) as (client, settings):
            staff = Staff(client, database_url)
            v2, key = _fit_v2(staff, cable)
            _steal(staff, v2)
            stolen = _latest_version(database_url)
            broker.stop()
            window = clock.next_window()
            wait_until(lambda: _latest_version(database_url) > stolen)  # renewed, with no broker to take it
            renewed = _latest_version(database_url)
            # The same address and password, nothing retained: what arrives is what the publisher kept.
            broker = start_broker("amqtt", port=broker.port, password=broker.password)
            listener = GatewayListener(broker)
            try:
                hotlist = _checked(listener.version(renewed, settings), settings)
            finally:
                listener.close()
            assert hotlist.eids_by_window()[window] == [ChipKey(key).eid(window)]
    finally:
        broker.stop()
