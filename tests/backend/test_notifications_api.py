"""The owner's notification API through the real app and database: choices, Web Push devices, recent notifications
with their delivery state; and what another owner, staff or a guessed id can never reach."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from protocol.messages import parse_tag
from tests import factories
from tests.backend.conftest import Staff
from tests.backend.test_notifications_outbox import MOTION, _write

P256DH = "B" + "A" * 86  # the shape of a browser's key (the API stores it; the sender's tests use real ones)
AUTH = "c2VjcmV0LWF1dGgtMTYhIQ"  # 16 bytes, base64url


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    """The app with SMS and e-mail configured but no sender running (these tests look at the outbox, not at what
    leaves it); an owner may hold two bikes (one changes hands)."""
    settings = factories.settings(
        database_url,
        sms_gateway_url="http://127.0.0.1:9/sms",
        smtp_host="127.0.0.1",
        notify_in_backend=False,
        max_bikes_per_owner=2,
    )
    with TestClient(create_app(settings, run_ingest=False)) as c:
        yield c


@pytest.fixture
def people(client: TestClient, database_url: str) -> dict[str, Any]:
    staff = Staff(client, database_url)
    a, b = staff.register(), staff.register()
    return {"staff": staff, "a": a, "b": b, "owner_a": staff.owner_of(a), "owner_b": staff.owner_of(b)}


PREFS = {
    "channels": ["sms", "email"],
    "email": "li@example.org",
    "sms_number": "13912345678",
    "language": "en",
    "quiet_start": "22:00",
    "quiet_end": "07:00",
    "time_zone": "Asia/Shanghai",
}


def test_an_owner_chooses_channels_addresses_and_quiet_hours(people):
    owner = people["owner_a"]
    r = owner.get("/api/me/notifications/preferences")
    assert r.status_code == 200, r.text
    assert r.json()["channels"] == [] and r.json()["available"] == ["sms", "email"]
    assert r.json()["registered_mobile_masked"].startswith("1") and "*" in r.json()["registered_mobile_masked"]
    r = owner.put("/api/me/notifications/preferences", json=PREFS)
    assert r.status_code == 200, r.text
    assert {k: r.json()[k] for k in PREFS} == PREFS
    assert owner.get("/api/me/notifications/preferences").json() == r.json()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channels": ["webpush"]}, "channels"),  # not configured in this deployment
        ({"channels": ["carrier-pigeon"]}, "channels"),
        ({"email": "not-an-address"}, "email"),
        ({"sms_number": "12345"}, "sms_number"),
        ({"quiet_start": "25:00"}, "quiet_start"),
        ({"quiet_end": None}, None),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"channels": ["email"], "email": None}, None),
    ],
)
def test_preferences_the_deployment_cannot_honour_are_refused(people, change, field):
    r = people["owner_a"].put("/api/me/notifications/preferences", json={**PREFS, **change})
    assert r.status_code == 422, r.text
    if field:
        assert field in r.text


def test_only_an_owner_has_notification_preferences_and_only_their_own(people, database_url):
    a, b = people["owner_a"], people["owner_b"]
    assert a.put("/api/me/notifications/preferences", json=PREFS).status_code == 200
    owner_a = people["a"]["owner"]["owner_id"]
    # Another owner sees their own (empty) choices, whatever id they try to slip in.
    for url in (
        "/api/me/notifications/preferences",
        f"/api/me/notifications/preferences?owner_id={owner_a}",
        f"/api/me/notifications?owner_id={owner_a}",
    ):
        r = b.get(url)
        assert r.status_code == 200 and "li@example.org" not in r.text and "13912345678" not in r.text
    r = b.put(
        f"/api/me/notifications/preferences?owner_id={owner_a}",
        json={**PREFS, "email": "thief@example.org", "owner_id": owner_a},
    )
    assert r.status_code == 200
    assert a.get("/api/me/notifications/preferences").json()["email"] == "li@example.org"
    assert b.get("/api/me/notifications/preferences").json()["email"] == "thief@example.org"
    staff = people["staff"]
    for caller in (staff.clerk, staff.police, staff.admin, staff.installer, staff.anonymous):
        assert caller.get("/api/me/notifications/preferences").status_code in (401, 403)
        assert caller.get("/api/me/notifications").status_code in (401, 403)
        assert caller.put("/api/me/notifications/preferences", json=PREFS).status_code in (401, 403)


def test_a_device_subscribes_to_web_push_for_its_owner_only(people, database_url):
    a, b = people["owner_a"], people["owner_b"]
    sub = {"endpoint": "https://push.example.net/send/abc", "keys": {"p256dh": P256DH, "auth": AUTH}}
    assert a.post("/api/me/notifications/push-subscriptions", json=sub).status_code == 204
    assert a.post("/api/me/notifications/push-subscriptions", json=sub).status_code == 204  # again: still one
    assert a.get("/api/me/notifications/preferences").json()["push_devices"] == 1
    assert b.get("/api/me/notifications/preferences").json()["push_devices"] == 0
    # Another owner cannot remove it by naming it.
    assert b.post("/api/me/notifications/push-subscriptions/delete", json=sub).status_code == 204
    assert a.get("/api/me/notifications/preferences").json()["push_devices"] == 1
    assert a.post("/api/me/notifications/push-subscriptions/delete", json=sub).status_code == 204
    assert a.get("/api/me/notifications/preferences").json()["push_devices"] == 0
    for bad in (
        {"endpoint": "javascript:alert(1)", "keys": {"p256dh": P256DH, "auth": AUTH}},
        {"endpoint": "https://push.example.net/x", "keys": {"p256dh": "short", "auth": AUTH}},
        {"endpoint": "https://push.example.net/x", "keys": {"p256dh": P256DH}},
        {"endpoint": "https://push.example.net/x", "keys": "[Filtered]"},
    ):
        assert a.post("/api/me/notifications/push-subscriptions", json=bad).status_code == 422, bad
    assert a.get("/api/me/notifications/push-key").json() == {"public_key": None}


def test_recent_notifications_show_delivery_state_and_never_another_owners(people, database_url):
    a, b = people["owner_a"], people["owner_b"]
    for caller in (a, b):
        assert caller.put("/api/me/notifications/preferences", json=PREFS).status_code == 200
    bike_a = people["a"]["bike"]
    tag = parse_tag(bike_a["tag_id"])
    assert a.post(f"/api/bikes/{bike_a['bike_id']}/arm", json={"armed": True}).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as conn:
        factories.station(conn, "st-9")
        _write(conn, factories.batch("st-9", 1, [tag], flags=MOTION))
        conn.execute("UPDATE notifications SET state = 'sent', sent_at = now(), attempts = 1 WHERE channel = 'sms'")
    mine = a.get("/api/me/notifications").json()
    assert sorted((n["kind"], n["channel"], n["state"], n["sent_at"] is not None) for n in mine) == [
        ("armed_bike_moving", "email", "pending", False),
        ("armed_bike_moving", "sms", "sent", True),
    ]
    assert all(n["plate"] == bike_a["plate"] and n["station_name"] == "Station st-9" for n in mine)
    assert b.get("/api/me/notifications").json() == []
    # The bike changes hands: what A was told stays A's; what happens next is told to B alone.
    code = a.post(f"/api/bikes/{bike_a['bike_id']}/transfer-consent").json()["code"]
    owner_b = people["b"]["owner"]["owner_id"]
    staff = people["staff"]
    r = staff.clerk.post(
        f"/api/bikes/{bike_a['bike_id']}/transfer", json={"new_owner_id": owner_b, "consent_code": code}
    )
    assert r.status_code == 200, r.text
    # The consent code was told to A (by both channels), before the transfer.
    assert [n["kind"] for n in a.get("/api/me/notifications").json()].count("transfer_requested") == 2
    assert b.post(f"/api/bikes/{bike_a['bike_id']}/arm", json={"armed": True}).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE alarms SET state = 'cleared' WHERE kind = 'armed_bike_moving'")
        _write(conn, factories.batch("st-9", 2, [tag], flags=MOTION))
    b_kinds = [n["kind"] for n in b.get("/api/me/notifications").json()]
    assert b_kinds == ["armed_bike_moving", "armed_bike_moving"]
    assert len(a.get("/api/me/notifications").json()) == 4  # A's two alarm rows and two transfer rows, no more
