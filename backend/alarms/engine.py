"""The alarm engine: runs detectors on what a flush wrote and raises their evidence, in the write's transaction.

Adding an alarm kind raised from passages is adding one module to detectors/ and its Detector here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import timedelta

import psycopg
from psycopg.pq import TransactionStatus

from backend.alarms import store, watch_list
from backend.alarms.detector import Detector
from backend.alarms.detectors import armed_bike_moving, chip_cloned, low_battery, stolen_chip_seen, tamper
from backend.alarms.evidence import Committed
from backend.settings import BackendSettings
from backend.zones import crossings

DEFAULT_THEFT_LOOKBACK = timedelta(seconds=BackendSettings.model_fields["police_theft_lookback_s"].default)

# Judged in memory in each flush's own transaction: a stolen chip's alarm must not wait, nor be lost to a crash.
ON_COMMIT: tuple[Detector, ...] = (
    stolen_chip_seen.DETECTOR,
    armed_bike_moving.DETECTOR,
    tamper.DETECTOR,
    low_battery.DETECTOR,
)


def deferred(max_speed_kmh: float) -> tuple[Detector, ...]:
    """Detectors whose cost is mostly per query, run on many flushes' passages at once (about once a second)."""
    return (chip_cloned.detector(max_speed_kmh),)


def raise_alarms(
    conn: psycopg.Connection,
    committed: Committed,
    detectors: Sequence[Detector],
    theft_lookback: timedelta = DEFAULT_THEFT_LOOKBACK,
    zones: crossings.ZoneCache | None = None,
) -> list[int]:
    """Run the detectors on written passages and raise or update their alarms, in the transaction the caller has
    open (the flush's own, so the alarms commit with the passages) or else in one of their own; the ids of the
    alarms raised or updated. Nothing written costs no query. A stolen bike is watched from its theft, but at most
    `theft_lookback` before its report (BIKEGUARD_POLICE_THEFT_LOOKBACK_S). With `zones`, a stolen chip's alarm also
    records the zone borders it crossed since its previous passage (backend.zones.crossings)."""
    if not len(committed):
        return []
    # A savepoint inside the flush's transaction would cost two round trips a flush and protect nothing: a refused
    # judgement refuses the flush, whose messages are then written one by one.
    within = conn.info.transaction_status == TransactionStatus.INTRANS
    with contextlib.nullcontext() if within else conn.transaction(), conn.cursor() as cur:
        watched = watch_list.load(cur, theft_lookback) if any(d.watches for d in detectors) else {}
        evidence = [e for d in detectors for e in d.detect(cur, committed, watched)]
        # Judged before the raise moves the alarm to its latest station: that was the chip's previous passage.
        crossed = crossings.find(cur, evidence, zones) if zones is not None else []
        raised = store.raise_evidence(cur, evidence)
        crossings.record(cur, crossed)
        return raised
