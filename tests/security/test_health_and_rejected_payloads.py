"""Issue 11 #14: a public /api/health with the ingest's counters, and rejected payloads kept whole and forever.

Anyone could read the ingest's figures (and, before issue 10, reject reasons with attacker-chosen text as counter
keys); anyone who could publish to the broker could have every payload up to the broker's limit stored whole in
rejected_messages, which nothing ever cleaned up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.ingest.rejects import KINDS
from bikeguard.services import Broker
from protocol import topics
from tests import factories
from tests.backend.conftest import Staff
from tests.backend.test_ingest import count, ours, wait_until

CAP_BYTES = 64 * 1024  # the default BIKEGUARD_INGEST_REJECT_MAX_RAW_BYTES
FLOOD_BYTES = 1_000_000


@pytest.fixture
def backend(database_url: str, broker: Broker, topic_prefix: str) -> Iterator[Staff]:
    """The app with its ingest on the test's broker, maintenance every fraction of a second, staff signed in."""
    settings = factories.settings(
        database_url,
        mqtt_url=broker.url,
        mqtt_client_id=f"security-{topic_prefix}",
        mqtt_shared_group=f"security-{topic_prefix}" if broker.supports_shared_subscriptions else None,
        maintenance_interval_s=0.2,
    )
    with TestClient(create_app(settings)) as client:
        yield Staff(client, database_url)


def test_anonymous_health_says_only_ok_and_staff_see_fixed_kinds(
    backend: Staff, publish: Callable[[str, bytes], None], database_url: str, topic_prefix: str
) -> None:
    chosen = f"{topic_prefix}-DROP-TABLE-sightings"
    # Built by hand: protocol.topics refuses such a station id, a hostile publisher does not ask it.
    publish(f"{topics.ROOT}/stations/{chosen}/sightings", b'{"v": 1, "note": "attacker text"}')
    wait_until(
        lambda: (
            count(database_url, "SELECT count(*) FROM rejected_messages WHERE topic LIKE %s", ours(topic_prefix)) >= 1
        )
    )
    anonymous = backend.anonymous.get("/api/health")
    assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
    assert backend.anonymous.get("/api/health/ingest").status_code == 401
    detail = backend.installer.get("/api/health/ingest")
    assert detail.status_code == 200, detail.text
    rejected = detail.json()["ingest"]["rejected"]
    assert rejected and set(rejected) <= set(KINDS), rejected
    assert "DROP" not in detail.text and "attacker" not in detail.text


def test_a_huge_rejected_payload_is_kept_capped_with_its_length(
    backend: Staff, publish: Callable[[str, bytes], None], database_url: str, topic_prefix: str
) -> None:
    station = f"{topic_prefix}-flood"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    publish(topics.station_topic(station, "sightings"), b"[" + b"1," * (FLOOD_BYTES // 2) + b"1]")
    pattern = ours(topic_prefix)
    wait_until(lambda: count(database_url, "SELECT count(*) FROM rejected_messages WHERE topic LIKE %s", pattern) >= 1)
    with psycopg.connect(database_url) as conn:
        kept, length = conn.execute(
            "SELECT octet_length(raw), raw_bytes FROM rejected_messages WHERE topic LIKE %s", (pattern,)
        ).fetchone()  # type: ignore[misc]
    assert kept == CAP_BYTES and length > FLOOD_BYTES


def test_old_rejected_messages_are_cleaned_up(backend: Staff, database_url: str, topic_prefix: str) -> None:
    topic = topics.station_topic(f"{topic_prefix}-old", "sightings")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO rejected_messages (received_at, topic, kind, reason, raw) VALUES"
            " (now() - interval '31 days', %s, 'invalid', 'old', 'x'),"
            " (now() - interval '29 days', %s, 'invalid', 'recent', 'y')",
            (topic, topic),
        )
    reasons = "SELECT count(*) FROM rejected_messages WHERE topic = %s AND reason = %s"
    wait_until(lambda: count(database_url, reasons, topic, "old") == 0)
    assert count(database_url, reasons, topic, "recent") == 1
