"""Gaps between a real gateway and the database: a batch the broker acknowledged and delivered to nobody is asked for
and sent again long before the gateway's own resend; batches a full spool dropped are closed as lost, and the
installer sees them. Beacons into a pty, the gateway, a real broker, the backend ingest and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from backend.ingest.consumer import Ingest
from backend.station_health import station_health
from bikeguard.services import Broker
from gateway.spool import MIB, Spool
from gateway.station import Station
from protocol import topics
from protocol.messages import utcnow
from tests import factories
from tests.e2e.test_gateway_faults import assert_exactly_once, send_tags, stored, wait_stored
from tests.gateway.harness import FakeModule, eventually, fast_settings, running

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def ingesting(database_url: str, broker: Broker, name: str) -> AsyncIterator[Ingest]:
    """The ingest with a one-second grace period and a gap check five times a second; `name` registered first."""
    with psycopg.connect(database_url) as conn:
        factories.station(conn, name)
    settings = factories.settings(
        database_url,
        mqtt_url=broker.url,
        mqtt_client_id=f"ingest-{name}",
        mqtt_shared_group=f"ingest-{name}" if broker.supports_shared_subscriptions else None,
        ingest_gap_grace_s=1.0,
        ingest_gap_check_s=0.2,
    )
    worker = Ingest(settings)
    await asyncio.to_thread(worker.start)
    try:
        yield worker
    finally:
        await asyncio.to_thread(worker.stop)


async def set_subscribed(ingest: Ingest, subscribed: bool) -> None:
    """Take the ingest's sightings subscription away (a broker that forgot it) or give it back; wait for the broker."""
    done = threading.Event()
    client = ingest.client
    sightings = topics.station_filter("sightings", ingest.settings.mqtt_shared_group or None)
    if subscribed:
        # The ingest's own handler too: it marks the broker connected.
        handler = client.on_subscribe
        client.on_subscribe = lambda *a: (handler(*a), done.set())
        client.subscribe(sightings, 1)
    else:
        client.on_unsubscribe = lambda *_: done.set()
        client.unsubscribe(sightings)
    assert await asyncio.to_thread(done.wait, 10), "the broker did not answer"


async def test_a_batch_delivered_to_nobody_is_asked_for_and_sent_again_long_before_the_gateways_own_resend(
    broker: Broker, database_url: str, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    # Without the request, the gateway would send the lost batch again only after ten minutes.
    settings = fast_settings(
        topic_prefix, module.path, broker.url, tmp_path / "s.spool", passage_gap_s=0.2, confirm_timeout_s=600
    )
    async with ingesting(database_url, broker, topic_prefix) as ingest, running(Station(settings)) as station:
        assert station.uplink is not None and station.spool is not None
        uplink, spool = station.uplink, station.spool
        fed = send_tags(module, range(1, 4))
        await wait_stored(database_url, topic_prefix, set(fed))
        await eventually(lambda: spool.depth == 0, what="the first batch confirmed")

        await set_subscribed(ingest, False)
        fed += send_tags(module, range(4, 6))  # acknowledged by the broker, delivered to nobody
        await eventually(lambda: spool.unconfirmed >= 1 and spool.depth == spool.unconfirmed, what="sent, unconfirmed")
        await set_subscribed(ingest, True)
        fed += send_tags(module, range(6, 8))  # stored: the gap below it is seen

        rows = await wait_stored(database_url, topic_prefix, set(fed), timeout_s=30)
        assert uplink.batches_requested_held >= 1 and uplink.requests >= 1
        gaps = ingest.gaps.counters
        await eventually(lambda: gaps.recovered_by_station[topic_prefix] >= 1, what="counted as recovered")
        assert gaps.batches_lost == 0 and gaps.gaps_by_station[topic_prefix] >= 1
        await eventually(lambda: spool.depth == 0, what="everything confirmed")
    assert_exactly_once(rows, set(fed))
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM batch_gaps WHERE station_id = %s", (topic_prefix,)).fetchone() == (0,)


async def test_batches_a_full_spool_dropped_are_closed_as_lost_with_the_reason_and_the_installer_sees_them(
    broker: Broker, database_url: str, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    # A station whose uplink was down long enough for its spool to fill: batch `first` reached the backend before,
    # then four big batches did not fit together in 1 MiB and the two oldest were dropped.
    spool_path, first = tmp_path / "s.spool", 1_764_000_000_000
    full = Spool(spool_path, max_bytes=MIB, first_batch_seq=first)
    big = 3000  # sightings a batch: about 400 KB
    batches = [factories.batch(topic_prefix, first, [1])]
    batches += [factories.batch(topic_prefix, first + n, list(range(n * big, (n + 1) * big))) for n in range(1, 5)]
    for b in batches:
        full.put_sightings(topics.station_topic(topic_prefix, "sightings"), lambda _seq, b=b: b.to_json(), 1)
        if b.batch_seq == first:
            full.confirm([first])  # it reached the backend before the uplink went down
    assert full.dropped_batches == 2  # first + 1 and first + 2
    full.close()

    settings = fast_settings(topic_prefix, module.path, broker.url, spool_path, spool_max_bytes=MIB)
    async with ingesting(database_url, broker, topic_prefix) as ingest:
        with psycopg.connect(database_url) as conn:  # the backend's record of that batch
            conn.execute(
                "INSERT INTO ingested_batches (station_id, batch_seq, sent_at, sightings) VALUES (%s, %s, %s, 1)",
                (topic_prefix, first, utcnow()),
            )
        async with running(Station(settings)) as station:
            assert station.uplink is not None
            kept = {t for b in batches[3:] for t in (int(s.tag_id, 16) for s in b.sightings)}
            await wait_stored(database_url, topic_prefix, kept)
            gaps = ingest.gaps.counters
            await eventually(lambda: gaps.lost_by_station[topic_prefix] == 2, 30, what="two batches lost")
            assert gaps.lost_by_reason == {"dropped": 2} and station.uplink.batches_requested_gone == 2
    assert_exactly_once(stored(database_url, topic_prefix), kept)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:  # what /api/stations/health serves
        shown = {h["station_id"]: h for h in await station_health(conn, utcnow())}[topic_prefix]
    assert (shown["batches_missing"], shown["batches_lost"], shown["gaps_not_issued"]) == (0, 2, 0)
