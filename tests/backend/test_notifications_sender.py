"""The sender and its channels against real local providers: SMTP (aiosmtpd), an HTTP SMS gateway, a Web Push
service whose payload the test decrypts with the subscription's keys; retries, backoff, quiet hours, and a worker
SIGKILLed mid-send."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from typing import Any

import http_ece
import psycopg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from py_vapid import Vapid

from backend.notifications import preferences
from backend.notifications.worker import Sender, quiet_until
from tests import factories
from tests.backend.notify_standins import http_standin, smtp_server
from tests.backend.test_notifications_outbox import MOTION, _write, prefer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def conn(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _send_all(settings: Any, rounds: int = 1) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as aconn:
            sender = Sender(settings)
            for _ in range(rounds):
                await sender.run_once(aconn)

    asyncio.run(go())


def _moving_bike(conn: psycopg.Connection, *channels: str, tag: int = 0xC1, **prefs: Any) -> int:
    """An armed bike of a new owner who chose `channels`, seen moving: its outbox rows are written. The owner."""
    factories.station(conn, "st-1")
    owner = factories.owner(conn, name="Wang Fang")
    factories.bike(conn, tag, plate_number="浙A00001", owner_id=owner, armed=True)
    prefer(conn, owner, *channels)
    if prefs:
        sets = ", ".join(f"{k} = %({k})s" for k in prefs)
        conn.execute(f"UPDATE notification_preferences SET {sets} WHERE owner_id = %(o)s", {**prefs, "o": owner})
    _write(conn, factories.batch("st-1", tag, [tag], flags=MOTION))
    return owner


def _states(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT channel, state, attempts, sent_at IS NOT NULL, last_error FROM notifications ORDER BY notification_id"
    ).fetchall()


def test_email_reaches_a_real_smtp_server_with_a_stable_message_id_and_no_owner_data(conn, database_url):
    owner = _moving_bike(conn, "email", language="en")
    with smtp_server() as (port, mailbox):
        settings = factories.settings(
            database_url, smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none", smtp_from="Bikeguard <n@bg.test>"
        )
        _send_all(settings)
    [message] = mailbox.messages
    [notification_id] = conn.execute("SELECT notification_id FROM notifications").fetchone()
    assert mailbox.envelopes == [("n@bg.test", [f"owner{owner}@example.org"])]
    assert message["Subject"] == "Your bike is moving"
    assert message["Message-ID"] == f"<bikeguard-n{notification_id}@bg.test>"
    body = message.get_payload(decode=True).decode()
    assert "浙A00001" in body and "Station st-1" in body
    assert "Wang" not in message.as_string() and "Lake Street" not in message.as_string()
    assert _states(conn) == [("email", "sent", 1, True, None)]


def test_sms_goes_to_the_configured_gateway_with_credentials_template_and_idempotency_key(conn, database_url):
    _moving_bike(conn, "sms")
    with http_standin() as gateway:
        settings = factories.settings(
            database_url,
            sms_gateway_url=gateway.url + "/send",
            sms_gateway_username="county",
            sms_gateway_password="s3cret",
            sms_body_template='{"account": "county", "mobile": "$to", "content": "$text", "ref": "$reference"}',
        )
        _send_all(settings)
    [request] = gateway.requests
    [notification_id] = conn.execute("SELECT notification_id FROM notifications").fetchone()
    assert request.path == "/send"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"county:s3cret").decode()
    assert request.headers["idempotency-key"] == f"bikeguard-n{notification_id}"
    body = request.json()
    assert body["account"] == "county" and body["mobile"] == "13800000000"
    assert body["ref"] == f"bikeguard-n{notification_id}"
    assert body["content"].startswith("【电动车防盗】") and "浙A00001" in body["content"]
    # No more personal data than the plate: not the name, the address, the ID number, nor the registered mobile.
    [(mobile, address)] = conn.execute("SELECT mobile, address FROM owners").fetchall()
    assert all(x not in body["content"] for x in ("Wang", address, mobile, "3301"))
    assert _states(conn) == [("sms", "sent", 1, True, None)]


@pytest.mark.parametrize("key_form", ["raw", "pem"])
def test_web_push_is_encrypted_for_the_subscription_and_signed_with_the_vapid_key(conn, database_url, key_form):
    owner = _moving_bike(conn, "webpush", language="en")
    vapid = Vapid()
    vapid.generate_keys()
    vapid_private = (
        _b64(vapid.private_key.private_numbers().private_value.to_bytes(32, "big"))
        if key_form == "raw"
        else vapid.private_pem().decode()  # as `vapid --gen` writes private_key.pem
    )
    vapid_public = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    device_key = ec.generate_private_key(ec.SECP256R1())
    device_public = device_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    auth_secret = os.urandom(16)
    with http_standin(status=201) as push_service:
        conn.execute(
            "INSERT INTO push_subscriptions (owner_id, endpoint, p256dh, auth) VALUES (%s, %s, %s, %s)",
            (owner, push_service.url + "/push/dev1", _b64(device_public), _b64(auth_secret)),
        )
        settings = factories.settings(database_url, vapid_private_key=vapid_private, vapid_subject="mailto:ops@bg.test")
        _send_all(settings)
    # The key the portal subscribes with (GET /api/me/notifications/push-key) is this key's public half.
    assert preferences.vapid_public_key(settings) == _b64(vapid_public)
    [request] = push_service.requests
    [notification_id] = conn.execute("SELECT notification_id FROM notifications").fetchone()
    assert request.path == "/push/dev1" and request.headers["content-encoding"] == "aes128gcm"
    assert request.headers["topic"] == f"bikeguard-n{notification_id}"
    payload = json.loads(
        http_ece.decrypt(request.body, private_key=device_key, auth_secret=auth_secret, version="aes128gcm")
    )
    assert payload["title"] == "Your bike is moving" and "浙A00001" in payload["body"] and "Wang" not in str(payload)
    # VAPID (RFC 8292): "vapid t=<JWT>, k=<public key>", the JWT signed ES256 by our key, for this push service.
    scheme, _, params = request.headers["authorization"].partition(" ")
    fields = dict(p.strip().split("=", 1) for p in params.split(","))
    assert scheme == "vapid" and _unb64(fields["k"]) == vapid_public
    header, claims, signature = fields["t"].split(".")
    raw = _unb64(signature)
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), vapid_public).verify(
        der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256())
    )
    claimed = json.loads(_unb64(claims))
    assert json.loads(_unb64(header))["alg"] == "ES256"
    assert claimed["aud"] == push_service.url and claimed["sub"] == "mailto:ops@bg.test"
    assert _states(conn) == [("webpush", "sent", 1, True, None)]


def test_a_device_the_push_service_says_is_gone_is_forgotten(conn, database_url):
    owner = _moving_bike(conn, "webpush")
    device = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    vapid = Vapid()
    vapid.generate_keys()
    key = _b64(vapid.private_key.private_numbers().private_value.to_bytes(32, "big"))
    with http_standin(status=410) as push_service:
        conn.execute(
            "INSERT INTO push_subscriptions (owner_id, endpoint, p256dh, auth) VALUES (%s, %s, %s, %s)",
            (owner, push_service.url + "/push/old", _b64(device), _b64(os.urandom(16))),
        )
        _send_all(factories.settings(database_url, vapid_private_key=key))
    assert conn.execute("SELECT count(*) FROM push_subscriptions").fetchone() == (0,)
    assert _states(conn) == [("webpush", "failed", 1, False, "every subscribed device is gone")]


def test_a_provider_outage_is_retried_with_backoff_and_sends_once(conn, database_url):
    _moving_bike(conn, "sms")
    with http_standin(fail_with=[503, 503]) as gateway:
        settings = factories.settings(
            database_url, sms_gateway_url=gateway.url, notify_backoff_s=0.2, notify_backoff_max_s=60
        )
        sender = Sender(settings)
        assert [sender.backoff(n).total_seconds() for n in (1, 2, 3, 12)] == [0.2, 0.4, 0.8, 60]
        _send_all(settings)
        [(_, state, attempts, sent, error)] = _states(conn)
        assert (state, attempts, sent) == ("pending", 1, False) and "503" in error
        due_in = conn.execute("SELECT due_at - now() FROM notifications").fetchone()[0]
        assert timedelta(0) < due_in <= timedelta(seconds=0.2)
        for _ in range(100):
            _send_all(settings)
            if _states(conn)[0][1] == "sent":
                break
            time.sleep(0.1)
    assert _states(conn) == [("sms", "sent", 3, True, None)]
    assert len(gateway.requests) == 3 and len(gateway.delivered) == 1


def test_a_refused_or_unconfigured_channel_fails_for_good_without_retrying(conn, database_url):
    _moving_bike(conn, "sms", "email")
    with http_standin(status=400) as gateway:
        _send_all(factories.settings(database_url, sms_gateway_url=gateway.url))
    assert _states(conn) == [
        ("sms", "failed", 1, False, "SMS gateway answered 400 Bad Request"),
        ("email", "failed", 1, False, "e-mail is not configured (BIKEGUARD_SMTP_HOST)"),
    ]


def test_quiet_hours_hold_an_armed_bike_alert_but_never_a_stolen_bike_alert(conn, database_url):
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).time(), (now + timedelta(hours=1)).time()
    owner = _moving_bike(conn, "sms", quiet_start=start, quiet_end=end, time_zone="UTC")
    stolen = factories.bike(conn, 0xC2, owner_id=owner)
    factories.theft(conn, stolen)
    _write(conn, factories.batch("st-1", 99, [0xC2]))
    with http_standin() as gateway:
        _send_all(factories.settings(database_url, sms_gateway_url=gateway.url))
    rows = conn.execute("SELECT kind, state, attempts, due_at FROM notifications ORDER BY notification_id").fetchall()
    assert [r[:3] for r in rows] == [("armed_bike_moving", "pending", 0), ("stolen_chip_seen", "sent", 1)]
    assert rows[0][3] == quiet_until(now, start, end, "UTC")  # held until the quiet hours end
    assert len(gateway.requests) == 1 and "被盗" in gateway.requests[0].json()["text"]


def test_quiet_hours_wrap_midnight_in_the_owners_time_zone():
    t = datetime(2026, 11, 29, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai
    until = quiet_until(t, clock(22), clock(7), "Asia/Shanghai")
    assert until is not None and until.astimezone(UTC) == datetime(2026, 11, 29, 23, 0, tzinfo=UTC)
    assert quiet_until(t, clock(8), clock(22), "Asia/Shanghai") is None
    assert quiet_until(t, None, None, "Asia/Shanghai") is None


def _worker(database_url: str, gateway_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BIKEGUARD_ENVIRONMENT": "development",
        "BIKEGUARD_DATABASE_URL": database_url,
        "BIKEGUARD_SMS_GATEWAY_URL": gateway_url,
        "BIKEGUARD_NOTIFY_SEND_TIMEOUT_S": "5",
        "BIKEGUARD_NOTIFY_LEASE_S": "6",
        "BIKEGUARD_NOTIFY_POLL_S": "0.2",
    }
    return subprocess.Popen([sys.executable, "-m", "bikeguard.cli", "notify"], cwd=ROOT, env=env)


def test_a_worker_killed_mid_send_loses_none_and_the_provider_delivers_each_once(conn, database_url):
    factories.station(conn, "st-1")
    tags = list(range(0xD1, 0xD6))
    for tag in tags:
        owner = factories.owner(conn)
        factories.bike(conn, tag, owner_id=owner, armed=True)
        prefer(conn, owner, "sms")
    _write(conn, factories.batch("st-1", 1, tags, flags=MOTION))
    ids = [r[0] for r in conn.execute("SELECT notification_id FROM notifications ORDER BY 1")]
    assert len(ids) == 5
    with http_standin(delay_s=30) as gateway:
        first = _worker(database_url, gateway.url)
        try:
            deadline = time.monotonic() + 60
            while not gateway.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gateway.requests, "the worker never called the SMS gateway"
            # The gateway has accepted at least one message and not yet answered: kill the worker mid-send.
            first.send_signal(signal.SIGKILL)
        finally:
            first.wait()
        taken = conn.execute("SELECT count(*) FROM notifications WHERE state = 'sending'").fetchone()[0]
        assert taken >= 1
        gateway.delay_s = 0
        second = _worker(database_url, gateway.url)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if conn.execute("SELECT bool_and(state = 'sent') FROM notifications").fetchone()[0]:
                    break
                time.sleep(0.2)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait()
    assert conn.execute("SELECT state, count(*) FROM notifications GROUP BY 1").fetchall() == [("sent", 5)]
    assert sorted(gateway.delivered) == sorted(f"bikeguard-n{i}" for i in ids)  # every one delivered, once
    # What the killed worker had in flight was sent again, with the same key: the gateway did not deliver it twice.
    assert gateway.duplicates and set(gateway.duplicates) <= set(gateway.delivered)
