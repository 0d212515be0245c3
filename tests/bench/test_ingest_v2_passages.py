"""The ingest bench's v2 passages are what a v2 gateway sends: each resolves to its chip, none looks cloned."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

from backend.resolution import ResolutionTable, Resolver, Verdict
from protocol.beacon_v2 import window_of
from protocol.messages import SightingBatch, parse_batch_rows


def bench_ingest() -> ModuleType:
    """bench/ingest.py, a script rather than a package module."""
    path = Path(__file__).resolve().parents[2] / "bench" / "ingest.py"
    spec = importlib.util.spec_from_file_location("bench_ingest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_bench_v2_beacon_resolves_to_its_chip_in_the_order_heard():
    ingest = bench_ingest()
    tags = ingest.bench_tags(300, seed=5)
    keys = ingest.bench_keys(tags)
    start = datetime.now(UTC) - timedelta(minutes=2)
    # Few chips and many passages: a chip passes several times, some of its beacons in the same millisecond.
    v1 = ingest.build_batches(20_000, 250, 10, tags, seed=5, start=start)
    later = v1[-1].sightings[0].first_seen_at
    twins = v1[-1].sightings[:2]
    v1[-1] = v1[-1].model_copy(
        update={
            "sightings": [
                twins[0].model_copy(update={"first_seen_at": later, "last_seen_at": later, "beacons": 1, "flags": 0}),
                twins[0].model_copy(
                    update={
                        "first_seen_at": later + timedelta(microseconds=200),
                        "last_seen_at": later + timedelta(microseconds=200),
                        "beacons": 1,
                        "flags": 4,
                    }
                ),
                *v1[-1].sightings[2:],
            ]
        }
    )
    v2: list[SightingBatch] = ingest.as_v2(v1, keys, start.timestamp() - 3600)
    resolver = Resolver(ResolutionTable(keys.items(), window_of(start.timestamp())))
    heard = []
    for b1, b2 in zip(v1, v2, strict=True):
        rows = parse_batch_rows(b2.to_json())["sightings"]  # as the ingest validates them
        for s1, row in zip(b1.sightings, rows, strict=True):
            assert "tag_id" not in row
            times = [row["first_seen_at"], row["last_seen_at"]][: len(row["heard"])]
            heard += [
                (at, bytes.fromhex(h), s1.tag_id, b2.station_id) for h, at in zip(row["heard"], times, strict=True)
            ]
    verdicts = []
    for at, payload, tag_id, station in sorted(heard, key=lambda h: h[0]):
        r = resolver.resolve(payload, at, station)
        verdicts.append(r.verdict)
        assert r.tag_id == int(tag_id, 16), f"a beacon of {tag_id} resolved as {r}"
    assert set(verdicts) <= {Verdict.OK, Verdict.DUPLICATE}
    assert verdicts.count(Verdict.OK) > 0.99 * len(verdicts)


def test_the_stored_rows_expected_count_window_splits_as_one_passage():
    ingest = bench_ingest()
    at = datetime.fromtimestamp((window_of(datetime.now(UTC).timestamp()) - 1) * 900 - 5, UTC)
    tag = ingest.bench_tags(1, seed=9)[0]
    row = {"first_seen_at": at, "last_seen_at": at + timedelta(seconds=3), "beacons": 2, "peak_rssi_dbm": -60}
    split = SightingBatch.model_validate(
        {
            "station_id": "st-000",
            "batch_seq": 1,
            "sent_at": at,
            "sightings": [
                {**row, "tag_id": f"{tag:08X}", "antenna": 0, "flags": 0},
                {
                    **row,
                    "tag_id": f"{tag:08X}",
                    "first_seen_at": at + timedelta(seconds=6),
                    "last_seen_at": at + timedelta(seconds=9),
                    "antenna": 0,
                    "flags": 0,
                },
            ],
        }
    )
    assert ingest.rows_after_joins([split]) == 1
