"""Fitting v2 chips at the counter: the key goes onto the chip through the programming cable (a simulated chip on a
real pty) and into chip_keys encrypted; all or nothing; retired with its chip; the registry says a chip's kind."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.chip_keys import ProgrammedChip, active_v2_keys
from backend.vault import Vault, VaultError
from protocol.beacon_v2 import ChipKey
from protocol.ids import parse_tag
from protocol.programming_cable import Programmer
from tests import factories
from tests.backend.conftest import Staff
from tests.backend.counter_cable import CounterCable, counter_cable


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[CounterCable]:
    """The counter's programming cable, nothing on it yet."""
    with counter_cable(tmp_path) as c:
        yield c


@pytest.fixture
def counter(database_url: str, cable: CounterCable) -> Iterator[Staff]:
    """The app with the counter's cable at cable.port, and its staff signed in."""
    settings = factories.settings(database_url, counter_programmer_url=cable.port, counter_programmer_timeout_s=0.5)
    with TestClient(create_app(settings, run_ingest=False)) as client:
        yield Staff(client, database_url)


def _vault(staff: Staff) -> Vault:
    return staff.client.app.state.registry.vault  # type: ignore[attr-defined,no-any-return]


def _keys(staff: Staff) -> list[tuple[int, bytes]]:
    with psycopg.connect(staff.database_url) as conn:
        return active_v2_keys(conn, _vault(staff))


def _counts(database_url: str) -> tuple[int, ...]:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM bikes), (SELECT count(*) FROM owners), (SELECT count(*) FROM chips),"
            " (SELECT count(*) FROM chip_keys), (SELECT count(*) FROM bike_bindings),"
            " (SELECT count(*) FROM certificates)"
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_fitted_v2_chip_beacons_with_the_key_the_backend_keeps(counter: Staff, cable: CounterCable) -> None:
    tag = factories.tag()
    chip = cable.put(parse_tag(tag))
    done = counter.register(tag_id=tag, chip_kind="v2")
    assert done["bike"]["tag_id"] == tag and done["bike"]["chip_kind"] == "v2"
    assert chip.keyed
    [(tag_id, key)] = _keys(counter)
    assert tag_id == parse_tag(tag)
    # The chip off the cable, beaconing with what the cable wrote (read from nowhere else): the backend's key opens
    # its beacons, and theirs only.
    beacons = chip.tag(random.Random(7)).poll(60.0)
    assert beacons
    backend_key = ChipKey(key)
    for beacon in beacons:
        assert backend_key.eid(beacon.window) == beacon.air.eid
        assert backend_key.open(beacon.window, beacon.air) == beacon.counter
    assert not ChipKey(bytes(16)).verify(beacons[0].window, beacons[0].air)
    with psycopg.connect(counter.database_url) as conn:
        row = conn.execute("SELECT key_check, retired_at FROM chip_keys").fetchone()
    assert row == (backend_key.check_value, None)


@pytest.mark.parametrize(
    ("on_cable", "code"),
    [
        ("nothing", "v2_cable_silent"),
        ("another chip", "v2_chip_other"),
        ("a keyed chip", "v2_chip_keyed"),
    ],
)
def test_cable_failure_registers_nothing(counter: Staff, cable: CounterCable, on_cable: str, code: str) -> None:
    tag = factories.tag()
    if on_cable == "another chip":
        cable.put(parse_tag(tag) + 1)
    elif on_cable == "a keyed chip":
        cable.put(parse_tag(tag))
        # A chip keyed before (at another counter, or a fitting whose commit failed): nobody here holds its key.
        with Programmer(cable.port, timeout_s=0.5) as other_counter:
            other_counter.write_key(bytes(range(16)), 1_795_953_600)
    before = _counts(counter.database_url)
    r = counter.clerk.post("/api/bikes", json=factories.registration(tag_id=tag, chip_kind="v2"))
    assert r.status_code == 409, r.text
    assert r.json()["code"] == code and r.json()["field"] == "tag_id"
    assert _counts(counter.database_url) == before
    assert counter.clerk.get(f"/api/bikes?tag_id={tag}").json() == []


def test_no_cable_at_this_counter_says_so(staff: Staff) -> None:
    r = staff.clerk.post("/api/bikes", json=factories.registration(chip_kind="v2"))
    assert r.status_code == 409
    assert r.json()["code"] == "v2_cable_unset"
    assert "BIKEGUARD_COUNTER_PROGRAMMER_URL" in r.json()["detail"]


def test_v1_and_v2_chips_side_by_side_say_their_kind(counter: Staff, cable: CounterCable) -> None:
    v1 = counter.register()
    v2_tag = factories.tag()
    cable.put(parse_tag(v2_tag))
    v2 = counter.register(tag_id=v2_tag, chip_kind="v2")
    assert v1["bike"]["chip_kind"] == "v1"
    for reg, kind in ((v1, "v1"), (v2, "v2")):
        tag = reg["bike"]["tag_id"]
        [found] = counter.clerk.get(f"/api/bikes?tag_id={tag}").json()
        assert (found["tag_id"], found["chip_kind"]) == (tag, kind)
        assert counter.clerk.get(f"/api/bikes/{reg['bike']['bike_id']}").json()["chip_kind"] == kind
    assert [t for t, _ in _keys(counter)] == [parse_tag(v2_tag)]


def _key_rows(database_url: str) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT tag_id, retired_at IS NOT NULL, key_ciphertext IS NULL FROM chip_keys").fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def test_replaced_chip_key_is_retired_and_erased(counter: Staff, cable: CounterCable) -> None:
    first = factories.tag()
    cable.put(parse_tag(first))
    bike_id = counter.register(tag_id=first, chip_kind="v2")["bike"]["bike_id"]
    second = factories.tag()
    cable.put(parse_tag(second))
    r = counter.clerk.post(f"/api/bikes/{bike_id}/chip", json={"tag_id": second, "chip_kind": "v2"})
    assert r.status_code == 200, r.text
    assert r.json()["chip_kind"] == "v2"
    assert [t for t, _ in _keys(counter)] == [parse_tag(second)]
    assert _key_rows(counter.database_url) == {parse_tag(first): (True, True), parse_tag(second): (False, False)}
    # A v1 chip in its place retires the v2 key too; so does deregistering the bike.
    third = factories.tag()
    assert counter.clerk.post(f"/api/bikes/{bike_id}/chip", json={"tag_id": third}).json()["chip_kind"] == "v1"
    assert _keys(counter) == []
    fourth = factories.tag()
    cable.put(parse_tag(fourth))
    assert counter.clerk.post(f"/api/bikes/{bike_id}/chip", json={"tag_id": fourth, "chip_kind": "v2"}).is_success
    r = counter.clerk.post(f"/api/bikes/{bike_id}/deregister", json={"status": "scrapped"})
    assert r.status_code == 200, r.text
    assert _keys(counter) == []
    assert all(retired for retired, _ in _key_rows(counter.database_url).values())


def test_failed_replacement_keeps_the_old_chip_and_key(counter: Staff, cable: CounterCable) -> None:
    first = factories.tag()
    cable.put(parse_tag(first))
    bike_id = counter.register(tag_id=first, chip_kind="v2")["bike"]["bike_id"]
    cable.take_off()
    r = counter.clerk.post(f"/api/bikes/{bike_id}/chip", json={"tag_id": factories.tag(), "chip_kind": "v2"})
    assert r.status_code == 409 and r.json()["code"] == "v2_cable_silent"
    assert counter.clerk.get(f"/api/bikes/{bike_id}").json()["tag_id"] == first
    assert [t for t, _ in _keys(counter)] == [parse_tag(first)]


def test_a_key_row_moved_to_another_chip_does_not_decrypt(counter: Staff, cable: CounterCable) -> None:
    tags = [factories.tag(), factories.tag()]
    for tag in tags:
        cable.put(parse_tag(tag))
        counter.register(tag_id=tag, chip_kind="v2")
    a, b = (parse_tag(t) for t in tags)
    with psycopg.connect(counter.database_url) as conn:
        conn.execute(
            "UPDATE chip_keys SET key_ciphertext = (SELECT key_ciphertext FROM chip_keys WHERE tag_id = %s)"
            " WHERE tag_id = %s",
            (a, b),
        )
    with pytest.raises(VaultError, match=f"{b:08X}"):
        _keys(counter)


def test_a_programmed_chip_prints_its_check_value_not_its_key() -> None:
    key = bytes(range(16))
    chip = ProgrammedChip(0x00C0FFEE, key, ChipKey(key).check_value)
    assert repr(chip) == "ProgrammedChip(tag_id=00C0FFEE, kcv=5dea26)"
    assert key.hex() not in f"{chip!r} {chip!s}"


def test_no_database_role_but_the_owner_and_the_backend_has_rights_on_keys(counter: Staff) -> None:
    with psycopg.connect(counter.database_url) as conn:
        acl = conn.execute("SELECT relacl::text FROM pg_class WHERE relname = 'chip_keys'").fetchone()
    assert acl is not None
    # The schema's owner and the application role only: PUBLIC (an entry "=...") has nothing.
    assert not any(entry.startswith("=") for entry in acl[0].strip("{}").split(","))
