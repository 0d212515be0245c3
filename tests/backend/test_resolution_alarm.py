"""A replayed and a forged v2 beacon become cloned-chip alarms through the store the v1 detector uses (the ingest
will raise them this way once resolution is wired in)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from backend.alarms import store
from backend.resolution import ResolutionTable, Resolver, Verdict
from firmware_sim.clone import CloneAttacker
from protocol.beacon_v2 import ChipKey, window_of
from protocol.frames import TagFlags
from tests import factories


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def test_replay_and_forgery_evidence_raise_one_cloned_chip_alarm_on_the_chip(conn: psycopg.Connection) -> None:
    now = datetime.now(UTC).replace(microsecond=0).timestamp()
    rng = random.Random(8)
    pairs = [(0x7A0000 + i, rng.randbytes(16)) for i in range(50)]
    tag_id, key = pairs[12]
    factories.station(conn, "v2-a")
    factories.station(conn, "v2-b", lat=30.30)
    factories.bike(conn, tag_id)
    resolver = Resolver(ResolutionTable(pairs, window_of(now)))
    genuine = ChipKey(key).seal(window_of(now), 500, TagFlags.MOTION)
    assert resolver.resolve(genuine.to_bytes(), datetime.fromtimestamp(now, UTC), "v2-a").verdict is Verdict.OK
    clone = CloneAttacker(rng)
    clone.capture(genuine)
    replay = resolver.resolve(clone.replay(genuine.eid).to_bytes(), datetime.fromtimestamp(now + 120, UTC), "v2-b")
    forged = resolver.resolve(clone.forge(genuine.eid).to_bytes(), datetime.fromtimestamp(now + 180, UTC), "v2-b")
    assert (replay.verdict, forged.verdict) == (Verdict.REPLAY, Verdict.BAD_MAC)
    assert replay.evidence is not None and forged.evidence is not None
    with conn.transaction(), conn.cursor() as cur:
        ids = store.raise_evidence(cur, [replay.evidence.as_alarm(), forged.evidence.as_alarm()])
    assert len(set(ids)) == 1, "one open alarm per kind and chip, updated by the second piece of evidence"
    row = conn.execute(
        "SELECT kind, severity, tag_id, station_id, sightings, state, first_seen_at FROM alarms"
    ).fetchall()
    assert row == [("chip_cloned", "critical", tag_id, "v2-b", 2, "active", datetime.fromtimestamp(now, UTC))]
