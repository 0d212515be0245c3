"""The backend's ingest workers, seen from outside as one (health, metrics, start and stop).

Each worker is a whole `Ingest`: its own MQTT client in the shared subscription group, its own lanes, writer threads
and connection pool. The broker hands each station message to one of them; a message that reaches two (a
redelivery after a broker restart, a worker killed before its acknowledgement) is stored once, because a batch is
written once per (station_id, batch_seq) and the writers lock rows in key order.

One worker runs in the backend's own process. Several run each in a process of its own (backend.ingest.process):
as threads of one process they took turns under its interpreter lock, and a worker's work is mostly Python. The
backend's process then serves the API and reads the workers' figures. For more cores than one machine has, run
more `bikeguard backend` processes, each with its own `BIKEGUARD_MQTT_CLIENT_ID` in the same shared subscription
group (docs/deploy.md).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import TypeVar

from backend.ingest import gaps
from backend.ingest.consumer import Ingest, IngestCounters
from backend.ingest.process import Figures, WorkerProcess, figures_of
from backend.ingest.v2 import V2Counters
from backend.settings import BackendSettings

Tally = TypeVar("Tally", IngestCounters, gaps.GapCounters, V2Counters)


def client_ids(base: str, workers: int) -> list[str]:
    """The MQTT client id of each worker: the first keeps `base` (its persistent session survives a change from one
    worker to several), the others add -2, -3, …"""
    return [base if i == 0 else f"{base}-{i + 1}" for i in range(workers)]


def added_up(kind: type[Tally], counters: list[Tally]) -> Tally:
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
    """`settings.ingest_workers` ingest workers started and stopped together, with their figures added up: one in
    this process, or each in a process of its own when there are several. These then take the sightings lane, and
    this process the alerts: a stolen chip's alert waits for no interpreter that is resolving a flush of v2
    beacons."""

    def __init__(self, settings: BackendSettings, settle_heap_s: float | None = None) -> None:
        self.settings = settings
        ids = client_ids(settings.mqtt_client_id, settings.ingest_workers)
        self.workers: list[Ingest] | list[WorkerProcess] = (
            [Ingest(settings, ids[0])]
            if len(ids) == 1
            else [WorkerProcess(settings, client_id, settle_heap_s, lanes=("sightings",)) for client_id in ids]
        )
        # Its broker connection keeps the client id the first worker's alerts had (<id>-alerts).
        self.alerts = Ingest(settings, ids[0], lanes=("alerts",)) if len(ids) > 1 else None

    def figures(self) -> list[Figures]:
        """Each worker's figures now (not those of this process's alerts, if the workers are processes)."""
        return [figures_of(w) if isinstance(w, Ingest) else w.figures() for w in self.workers]

    def _all_figures(self) -> list[Figures]:
        return self.figures() + ([figures_of(self.alerts)] if self.alerts else [])

    def pids(self) -> list[int]:
        """The processes the ingest's sightings run in: this one, or the workers' own."""
        return [os.getpid()] if isinstance(self.workers[0], Ingest) else [w.pid for w in self.workers if w.pid]

    @property
    def counters(self) -> IngestCounters:
        """What all workers have done since they started."""
        return added_up(IngestCounters, [f.counters for f in self._all_figures()])

    @property
    def gap_counters(self) -> gaps.GapCounters:
        """What all workers' gap checks and flushes have done about missing batches."""
        return added_up(gaps.GapCounters, [f.gap_counters for f in self.figures()])

    @property
    def v2_counters(self) -> V2Counters:
        """What all workers' resolutions of v2 beacons have done."""
        return added_up(V2Counters, [f.v2_counters for f in self._all_figures()])

    @property
    def batches_missing_now(self) -> dict[str, int]:
        """Batches asked for and still missing, per station (every worker reads it from the database)."""
        return self.figures()[0].batches_missing_now

    @property
    def broker_connected(self) -> bool:
        """Whether every worker is connected and subscribed."""
        return all(f.broker_connected for f in self._all_figures())

    def queued(self) -> dict[str, int]:
        """Messages waiting in each lane, over all workers."""
        out: Counter[str] = Counter()
        for f in self._all_figures():
            out.update(f.queued)
        return dict(out)

    def threads(self) -> dict[str, bool]:
        """Whether each worker's threads (and process) are alive, named with the worker's number when there are
        several (then this process's alerts thread too)."""
        figures = self.figures()
        if len(figures) == 1:
            return figures[0].threads
        threads = {f"{name}-{i + 1}": alive for i, f in enumerate(figures) for name, alive in f.threads.items()}
        return threads | (self.alerts.threads() if self.alerts else {})

    def start(self, wait_s: float = 10.0) -> None:
        """Start every worker; waits (at most wait_s in all, plus the processes' start) until each has its
        subscriptions."""
        everyone = [*self.workers, *([self.alerts] if self.alerts else [])]
        for w in everyone:
            w.start(wait_s=None)
        deadline = time.monotonic() + wait_s
        for w in everyone:
            w.wait_connected(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop every worker: each finishes what it holds, then disconnects. Worker processes are told all at once and
        then waited for."""
        if isinstance(self.workers[0], Ingest):
            self.workers[0].stop()
            return
        with ThreadPoolExecutor(len(self.workers) + 1) as pool:
            stopping = [pool.submit(w.stop) for w in self.workers]
            if self.alerts:
                stopping.append(pool.submit(self.alerts.stop))
            for done in stopping:
                done.result()
