"""Liveness, readiness and metrics: /api/health answers while the database is stuck, /api/ready says it is away,
/metrics gives the ingest's counters in the Prometheus text format."""

from __future__ import annotations

import time

import psycopg
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backend.api.app import create_app
from backend.ingest.consumer import Ingest
from backend.metrics import registry_for
from protocol import topics
from tests import factories
from tests.backend.conftest import Staff
from tests.backend.frozen import frozen_database
from tests.backend.test_ingest import count, wait_until


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_liveness_answers_at_once_while_the_database_is_stuck_and_readiness_says_it_is_away(database_url):
    with TestClient(create_app(factories.settings(database_url, ready_timeout_s=1.0), run_ingest=False)) as client:
        assert client.get("/api/ready").json() == {"status": "ready", "database": "ok"}
        with frozen_database(database_url):
            started = time.monotonic()
            health = client.get("/api/health")
            assert health.status_code == 200 and health.json() == {"status": "ok"}
            assert time.monotonic() - started < 1.0
            started = time.monotonic()
            ready = client.get("/api/ready")
            assert ready.status_code == 503
            assert ready.json()["status"] == "not ready" and "database" in ready.json()["database"]
            assert time.monotonic() - started < 4.0  # the setting's wait, not the pool's 30 s
        ready = client.get("/api/ready")
        assert ready.status_code == 200 and ready.json()["database"] == "ok"


def test_readiness_names_the_database_when_it_refuses_connections(database_url):
    unreachable = psycopg.conninfo.make_conninfo(database_url, port="1")  # nothing listens on port 1
    with TestClient(create_app(factories.settings(database_url), run_ingest=False)) as client:
        client.app.state.settings = factories.settings(unreachable)  # type: ignore[attr-defined]
        ready = client.get("/api/ready")
    assert ready.status_code == 503 and "database is unavailable" in ready.json()["database"]


def test_metrics_are_served_in_the_prometheus_text_format_without_signing_in(database_url):
    with TestClient(create_app(factories.settings(database_url), run_ingest=False)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    list(text_string_to_metric_families(response.text))  # parses


def test_ingest_metrics_count_stored_confirmed_repeated_and_rejected_per_station(
    ingest: Ingest, publish, database_url, topic_prefix
):
    station = f"{topic_prefix}-m"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    batch = factories.batch(station, 1, [1, 2, 3]).to_json()
    topic = topics.station_topic(station, "sightings")
    publish(topic, batch)
    publish(topic, batch)  # a resend
    publish(topic, factories.batch(station, 1, [9]).to_json())  # the same batch_seq, other content: a conflict
    publish(topic, b"{not json")
    wait_until(lambda: ingest.counters.batches_repeated >= 1 and ingest.counters.rejected["invalid"] >= 1)
    wait_until(lambda: ingest.counters.batches_conflicting >= 1)
    wait_until(lambda: ingest.counters.batches_confirmed >= 3)
    assert count(database_url, "SELECT count(*) FROM sightings WHERE station_id = %s", station) == 3
    samples = _samples(generate_latest(registry_for(ingest)).decode())
    assert samples[("bikeguard_ingest_sightings_stored_total", ())] >= 3
    assert samples[("bikeguard_ingest_batches_repeated_total", ())] >= 1
    assert samples[("bikeguard_ingest_station_batches_confirmed_total", (("station", station),))] == 3
    assert samples[("bikeguard_ingest_station_conflicts_total", (("station", station),))] == 1
    assert samples[("bikeguard_ingest_rejected_total", (("kind", "invalid"),))] >= 1
    assert samples[("bikeguard_ingest_queued", (("lane", "sightings"),))] == 0
    assert samples[("bikeguard_ingest_broker_connected", ())] == 1


def test_a_stuck_database_fills_the_bounded_lane_then_the_broker_keeps_the_rest_and_nothing_is_lost(
    database_url, broker, publish, topic_prefix
):
    settings = factories.settings(
        database_url,
        mqtt_url=broker.url,
        mqtt_client_id=f"health-{topic_prefix}",
        mqtt_shared_group=f"health-{topic_prefix}" if broker.supports_shared_subscriptions else None,
        ingest_max_queued_messages=2,
        ingest_flush_rows=1,  # one batch a flush: the writer is stuck on the first, the others queue
    )
    station = f"{topic_prefix}-q"
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
    topic = topics.station_topic(station, "sightings")
    sightings = "SELECT count(*) FROM sightings WHERE station_id = %s"
    with TestClient(create_app(settings)) as client:
        installer = Staff(client, database_url).installer
        ingest = client.app.state.ingest  # type: ignore[attr-defined]
        publish(topic, factories.batch(station, 1, [1]).to_json())
        wait_until(lambda: count(database_url, sightings, station) == 1)
        with frozen_database(database_url):
            for seq in range(2, 12):
                publish(topic, factories.batch(station, seq, [seq]).to_json())
            wait_until(lambda: ingest.queued()["sightings"] == 2)
            # /metrics (no database, for operators on the internal network) answers while the database is stuck.
            started = time.monotonic()
            samples = _samples(client.get("/metrics").text)
            assert time.monotonic() - started < 1.0
            # Never more than the bound: paho's thread waits, the other messages stay with the broker.
            assert samples[("bikeguard_ingest_queued", (("lane", "sightings"),))] == 2
            assert samples[("bikeguard_ingest_queued", (("lane", "alerts"),))] == 0
            assert samples[("bikeguard_ingest_broker_connected", ())] == 1
        wait_until(lambda: count(database_url, sightings, station) == 11)
        health = installer.get("/api/health/ingest").json()["ingest"]
        assert all(health["threads"].values()) and health["broker_connected"]
        assert ingest.counters.batches_new == 11


def test_messages_of_invented_stations_add_no_metric_series(ingest: Ingest, publish, database_url, topic_prefix):
    # Anyone with broker access can publish on any station topic: per-station series only for registered ones,
    # or an attacker could grow the scrape (and Prometheus) without bound.
    for i in range(5):
        invented = f"{topic_prefix}-x{i}"
        publish(topics.station_topic(invented, "sightings"), factories.batch(invented, 1, [1]).to_json())
    wait_until(lambda: ingest.counters.rejected["unknown station"] >= 5)
    samples = _samples(generate_latest(registry_for(ingest)).decode())
    assert samples[("bikeguard_ingest_rejected_total", (("kind", "unknown station"),))] >= 5
    assert not [key for key in samples if any(v.startswith(f"{topic_prefix}-x") for _, v in key[1])]
