"""Several ingest workers in one process, seen from outside as one (health, metrics, start and stop).

Each worker is a whole `Ingest`: its own MQTT client in the shared subscription group, its own lanes, writer threads
and connection pool. The broker hands each station message to one of them; a message that reaches two (a
redelivery after a broker restart, a worker killed before its acknowledgement) is stored once, because a batch is
written once per (station_id, batch_seq) and the writers lock rows in key order. More workers than cores gain
little (validation is Python); for more cores, run more `bikeguard backend` processes, each with its own
`BIKEGUARD_MQTT_CLIENT_ID` in the same shared subscription group (docs/deploy.md).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import fields
from typing import TypeVar

from backend.ingest import gaps
from backend.ingest.consumer import Ingest, IngestCounters
from backend.ingest.v2 import V2Counters
from backend.settings import BackendSettings

Figures = TypeVar("Figures", IngestCounters, gaps.GapCounters, V2Counters)


def client_ids(base: str, workers: int) -> list[str]:
    """The MQTT client id of each worker: the first keeps `base` (its persistent session survives a change from one
    worker to several), the others add -2, -3, …"""
    return [base if i == 0 else f"{base}-{i + 1}" for i in range(workers)]


def added_up(kind: type[Figures], counters: list[Figures]) -> Figures:
    """Several workers' counters (IngestCounters, GapCounters, V2Counters: numbers and Counters) added up."""
    out = kind()
    for c in counters:
        for f in fields(kind):
            mine = getattr(out, f.name)
            if isinstance(mine, Counter):
                mine.update(getattr(c, f.name))
            else:
                setattr(out, f.name, mine + getattr(c, f.name))
    return out


class IngestWorkers:
    """`settings.ingest_workers` ingest workers started and stopped together, with their figures added up."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.workers = [
            Ingest(settings, client_id) for client_id in client_ids(settings.mqtt_client_id, settings.ingest_workers)
        ]

    @property
    def counters(self) -> IngestCounters:
        """What all workers have done since they started."""
        return added_up(IngestCounters, [w.counters for w in self.workers])

    @property
    def gap_counters(self) -> gaps.GapCounters:
        """What all workers' gap checks and flushes have done about missing batches."""
        return added_up(gaps.GapCounters, [w.gap_counters for w in self.workers])

    @property
    def v2_counters(self) -> V2Counters:
        """What all workers' resolutions of v2 beacons have done."""
        return added_up(V2Counters, [w.v2.counters for w in self.workers])

    @property
    def batches_missing_now(self) -> dict[str, int]:
        """Batches asked for and still missing, per station (every worker reads it from the database)."""
        return self.workers[0].batches_missing_now

    @property
    def broker_connected(self) -> bool:
        """Whether every worker is connected and subscribed."""
        return all(w.broker_connected for w in self.workers)

    def queued(self) -> dict[str, int]:
        """Messages waiting in each lane, over all workers."""
        out: Counter[str] = Counter()
        for w in self.workers:
            out.update(w.queued())
        return dict(out)

    def threads(self) -> dict[str, bool]:
        """Whether each worker's threads are alive (named with the worker's number when there are several)."""
        if len(self.workers) == 1:
            return self.workers[0].threads()
        return {f"{name}-{i + 1}": alive for i, w in enumerate(self.workers) for name, alive in w.threads().items()}

    def start(self, wait_s: float = 10.0) -> None:
        """Start every worker; waits (at most wait_s in all) until each has its subscriptions."""
        for w in self.workers:
            w.start(wait_s=None)
        deadline = time.monotonic() + wait_s
        for w in self.workers:
            w.wait_connected(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop every worker: each finishes what it holds, then disconnects."""
        for w in self.workers:
            w.stop()
