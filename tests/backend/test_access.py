"""The viewer policy (backend/access.py): the rules one by one, and each rule's attack tried over real HTTP
against the served backend (uvicorn on a port, as a browser or a script would reach it)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

from backend import access
from backend.accounts import Role, User
from backend.alarms.kinds import STATION_KINDS
from backend.api.app import create_app
from bikeguard.services import free_port
from protocol.messages import utcnow
from tests import factories
from tests.serving import served


def _user(role: Role, owner_id: int | None = None, must_change_password: bool = False) -> User:
    return User(1, f"{role}1", role, role.title(), owner_id, must_change_password, utcnow() + timedelta(hours=1))


def test_admission_says_why_a_caller_may_not_pass() -> None:
    assert access.admission(None, ("police",)) == "sign in"
    assert access.admission(_user("police", must_change_password=True), ("police",)) == "change password"
    assert access.admission(_user("police", must_change_password=True), (), pending_ok=True) is None
    assert access.admission(_user("clerk"), ("police", "admin")) == "wrong role"
    assert access.admission(_user("admin"), ("police", "admin")) is None
    assert access.admission(_user("installer"), ()) is None


def test_each_role_sees_its_own_alarm_kinds() -> None:
    owner = access.alarm_scope(_user("owner", owner_id=7))
    assert owner.owner_id == 7 and owner.allows("armed_bike_moving")
    for role in ("police", "admin"):
        scope = access.alarm_scope(_user(role))
        assert scope.owner_id is None and not scope.allows("armed_bike_moving") and scope.allows("stolen_chip_seen")
    installer = access.alarm_scope(_user("installer"))
    assert [k for k in ("station_offline", "stolen_chip_seen", "armed_bike_moving") if installer.allows(k)] == [
        "station_offline"
    ]
    # The installer desk, opened by an admin: the admin's alarms, of the station kinds only.
    desk = access.alarm_scope(_user("admin"), only_kinds=STATION_KINDS)
    assert desk.allows("station_offline") and not desk.allows("stolen_chip_seen")
    assert not desk.allows("armed_bike_moving")


def test_an_owner_may_settle_only_the_alarms_that_are_their_business() -> None:
    owner = access.viewer_of(_user("owner", owner_id=7))
    assert owner.may_handle_alarm("armed_bike_moving") and not owner.may_handle_alarm("stolen_chip_seen")
    assert access.viewer_of(_user("police")).may_handle_alarm("stolen_chip_seen")


def test_only_owners_are_limited_to_their_own_bikes() -> None:
    assert access.viewer_of(_user("owner", owner_id=7)).bike_owner == 7
    assert access.viewer_of(_user("owner")).bike_owner == 0  # an owner account without an owner sees no bike
    assert {access.viewer_of(_user(r)).bike_owner for r in ("clerk", "police", "admin", "installer")} == {None}


def test_a_case_number_has_a_shape() -> None:
    assert access.require_case_number(" HZ-2026/0042 ", "x") == "HZ-2026/0042"
    for bad in (None, "", "  ", "x", "a b c d", "-abc", "A" * 41):
        with pytest.raises(access.CaseNumberRequired):
            access.require_case_number(bad, "x")
    assert access.viewer_of(_user("clerk")).case_for_person(None) is None
    with pytest.raises(access.CaseNumberRequired, match="a case number is required to see a bike's owner"):
        access.viewer_of(_user("police")).case_for_person(None)


# The attacks, over HTTP.


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """The backend (API and pages, no ingest) served by uvicorn on a free port."""
    port = free_port()
    with served(create_app(factories.settings(database_url, http_port=port), run_ingest=False), port) as url:
        yield url


def _as(base: str, username: str, password: str = factories.PASSWORD) -> httpx.Client:
    body = {"username": username, "password": password, "token_in_body": True}
    r = httpx.post(f"{base}/api/auth/login", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {r.json()['token']}"}, timeout=30)


def _owner(base: str, slip: dict[str, str]) -> httpx.Client:
    first = _as(base, slip["username"], slip["initial_password"])
    r = first.post(
        "/api/auth/password", json={"current_password": slip["initial_password"], "new_password": factories.PASSWORD}
    )
    assert r.status_code == 200, r.text
    return first


def _passage(database_url: str, tag_hex: str, at_s: float) -> None:
    """One passage of the chip at st-x, at_s seconds from now."""
    at = utcnow() + timedelta(seconds=at_s)
    with psycopg.connect(database_url) as conn:
        factories.station(conn, "st-x")
        conn.execute("INSERT INTO sightings VALUES (%s, %s, 'st-x', %s, 3, -60, 0, 0, 1)", (at, at, int(tag_hex, 16)))


@pytest.fixture
def town(server: str, database_url: str) -> Iterator[dict[str, Any]]:
    """Two registered bikes with their owners signed in, and a clerk, police, installer and admin."""
    with psycopg.connect(database_url) as conn:
        names = {role: factories.account(conn, role) for role in ("clerk", "police", "installer", "admin")}
    callers = {role: _as(server, name) for role, name in names.items()}
    bodies = [factories.registration(), factories.registration()]
    done = []
    for body in bodies:
        r = callers["clerk"].post("/api/bikes", json=body)
        assert r.status_code == 201, r.text
        done.append({**r.json(), "id_number": body["owner"]["id_number"]})
    owners = [_owner(server, d["owner_login"]) for d in done]
    yield {**callers, "base": server, "mine": done[0], "theirs": done[1], "me": owners[0], "them": owners[1]}
    for client in (*callers.values(), *owners):
        client.close()


def _window() -> dict[str, str]:
    return {"since": (utcnow() - timedelta(hours=1)).isoformat(), "until": (utcnow() + timedelta(hours=1)).isoformat()}


def test_an_owner_cannot_reach_another_owners_bike_trajectory_or_chip(town: dict[str, Any]) -> None:
    me, theirs = town["me"], town["theirs"]["bike"]
    other = theirs["bike_id"]
    missing = me.get("/api/bikes/999999").json()["detail"]
    for path in ("", "/trajectory", "/trajectory/summary", "/trajectory.gpx", "/history", "/certificate"):
        r = me.get(f"/api/bikes/{other}{path}", params=_window() if "trajectory" in path else None)
        assert r.status_code == 404, path
        assert r.json()["detail"] == missing.replace("999999", str(other)), path
    assert me.get("/api/sightings", params={"tag_id": theirs["tag_id"]}).status_code == 404
    assert me.get("/api/sightings", params={"station_id": "st-x"}).status_code == 403
    assert me.get(f"/bikes/{other}/certificate").status_code == 404


def test_police_need_a_case_number_for_a_bike_not_stolen_and_leave_an_audit_record(
    town: dict[str, Any], database_url: str
) -> None:
    police, bike = town["police"], town["mine"]["bike"]
    _passage(database_url, bike["tag_id"], 1)
    url = f"/api/bikes/{bike['bike_id']}/trajectory"
    for params in (_window(), {**_window(), "case_number": "x"}):
        refused = police.get(url, params=params)
        assert refused.status_code == 403 and "case number" in refused.json()["detail"]
    assert police.get("/api/sightings", params={"tag_id": bike["tag_id"]}).status_code == 403
    assert police.get(f"/api/bikes/{bike['bike_id']}/owner").status_code == 403
    assert [a for a in town["admin"].get("/api/audit").json() if a["role"] == "police"] == []

    allowed = police.get(url, params={**_window(), "case_number": "HZ-2026-0007"})

    assert allowed.status_code == 200 and len(allowed.json()) == 1
    [entry] = town["admin"].get("/api/audit", params={"case_number": "HZ-2026-0007"}).json()
    assert (entry["role"], entry["action"], entry["subject"]) == (
        "police",
        "bike.trajectory",
        f"bike:{bike['bike_id']}",
    )


def test_an_owner_gets_no_passage_from_before_they_held_the_bike(town: dict[str, Any], database_url: str) -> None:
    bike = town["mine"]["bike"]
    _passage(database_url, bike["tag_id"], 0)  # the first owner's ride, before the hand-over
    assert len(town["me"].get(f"/api/bikes/{bike['bike_id']}/trajectory", params=_window()).json()) == 1
    r = town["clerk"].post(
        f"/api/bikes/{bike['bike_id']}/transfer",
        json={"new_owner": factories.owner_body(), "old_owner_id_number": town["mine"]["id_number"]},
    )
    assert r.status_code == 200, r.text
    successor = _owner(town["base"], r.json()["owner_login"])
    _passage(database_url, bike["tag_id"], 1)  # the successor's ride

    trail = successor.get(f"/api/bikes/{bike['bike_id']}/trajectory", params=_window())
    passages = successor.get("/api/sightings", params={"tag_id": bike["tag_id"], **_window()})

    assert trail.status_code == 200 and len(trail.json()) == 1
    assert passages.status_code == 200 and len(passages.json()) == 1
    assert trail.json()[0]["first_seen_at"] == passages.json()[0]["first_seen_at"]
    # And the first owner, no longer holding it, gets nothing at all.
    assert town["me"].get(f"/api/bikes/{bike['bike_id']}/trajectory", params=_window()).status_code == 404
    assert town["me"].get("/api/sightings", params={"tag_id": bike["tag_id"]}).status_code == 404
    successor.close()


def test_an_installer_gets_no_personal_data(town: dict[str, Any]) -> None:
    installer, done = town["installer"], town["mine"]
    bike_id, owner_id = done["bike"]["bike_id"], done["owner"]["owner_id"]
    for path in (
        f"/api/bikes/{bike_id}",
        f"/api/bikes?plate={done['bike']['plate']}",
        f"/api/bikes/{bike_id}/owner?case_number=HZ-2026-0008",
        f"/api/bikes/{bike_id}/history",
        f"/api/bikes/{bike_id}/trajectory?case_number=HZ-2026-0008",
        f"/api/sightings?tag_id={done['bike']['tag_id']}&case_number=HZ-2026-0008",
        f"/api/owners/{owner_id}",
        "/api/bikes/search?q=x",
        "/api/audit",
    ):
        assert installer.get(path).status_code == 403, path
    assert installer.post("/api/owners/lookup", json={"id_number": done["id_number"]}).status_code == 403
    assert installer.get(f"/bikes/{bike_id}/certificate").status_code == 403
    assert installer.get("/api/stations").status_code == 200
