"""An ingest worker in a process of its own.

Workers that are threads of one process take turns under its one interpreter lock: their validation, COPY
encoding and v2 resolution (Python, most of a worker's work) use one core whatever their number. So when the backend
runs several workers (BIKEGUARD_INGEST_WORKERS > 1) each is a process of its own (`WorkerProcess`), started by the
backend's process, which then serves the API and asks each worker for its figures over a pipe (health, /metrics). A
worker process stops when told to, or when the backend's process is gone (its end of the pipe closes): what it has
not acknowledged is the broker's to deliver again, as after any crash.
"""

from __future__ import annotations

import copy
import itertools
import logging
import multiprocessing as mp
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from backend.ingest import gaps
from backend.ingest.consumer import LANES, Ingest, IngestCounters
from backend.ingest.v2 import V2Counters
from backend.settings import BackendSettings
from protocol import heap

log = logging.getLogger(__name__)

# How long a worker has to answer a question (its figures; whether it is connected) before it counts as not
# answering: a worker busy with a flush answers within milliseconds, a hung one never.
ANSWER_TIMEOUT_S = 5.0
# How long a worker has to finish what it holds when told to stop, before it is killed (its unacknowledged messages
# are then redelivered by the broker).
STOP_TIMEOUT_S = 60.0
_LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


@dataclass
class Figures:
    """What one worker has done and how it is, as health and /metrics read it."""

    counters: IngestCounters = field(default_factory=IngestCounters)
    gap_counters: gaps.GapCounters = field(default_factory=gaps.GapCounters)
    v2_counters: V2Counters = field(default_factory=V2Counters)
    batches_missing_now: dict[str, int] = field(default_factory=dict)
    broker_connected: bool = False
    queued: dict[str, int] = field(default_factory=dict)
    threads: dict[str, bool] = field(default_factory=dict)
    v2_chips: int = 0  # v2 chips its resolution table holds
    v2_table_bytes: int = 0


def figures_of(ingest: Ingest) -> Figures:
    """A worker's figures: its own counters, which its threads go on counting (a worker process sends a copy)."""
    return Figures(
        counters=ingest.counters,
        gap_counters=ingest.gap_counters,
        v2_counters=ingest.v2_counters,
        batches_missing_now=ingest.batches_missing_now,
        broker_connected=ingest.broker_connected,
        queued=ingest.queued(),
        threads=ingest.threads(),
        v2_chips=ingest.v2.chips,
        v2_table_bytes=ingest.v2.table_bytes,
    )


def _send_figures(conn: Connection, n: int, ingest: Ingest) -> None:
    """Answer question n with the worker's figures. Pickling a counter while a writer thread adds a key to it
    fails before anything is sent: then again."""
    for attempt in itertools.count():
        try:
            conn.send((n, figures_of(ingest)))
            return
        except RuntimeError:
            if attempt >= 10:
                raise


class WorkerProcess:
    """One ingest worker (a whole `Ingest`: its broker connections, lanes, writers and connection pool) in a process
    of its own, seen from the backend's process: started, asked for its figures, stopped."""

    def __init__(
        self,
        settings: BackendSettings,
        client_id: str,
        settle_heap_s: float | None = None,
        lanes: tuple[str, ...] = LANES,
    ) -> None:
        self.client_id = client_id
        ctx = mp.get_context("spawn")  # the backend's process has threads (uvicorn, pools): no fork
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve,
            args=(settings, client_id, lanes, child, logging.getLogger().getEffectiveLevel(), settle_heap_s),
            name=f"ingest {client_id}",
            daemon=True,  # ended with the backend's process, however that ends
        )
        self._lock = threading.Lock()
        self._asked = itertools.count(1)
        self._last = Figures()

    @property
    def pid(self) -> int | None:
        """The worker's process id once started."""
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Whether the worker's process runs."""
        return self._process.is_alive()

    def start(self, wait_s: float | None = 10.0) -> None:
        """Start the process; waits (None: not) until its subscriptions are acknowledged."""
        self._process.start()
        if wait_s is not None:
            self.wait_connected(wait_s)

    def wait_connected(self, wait_s: float) -> bool:
        """Wait until the worker's broker acknowledged its subscriptions; False (and a warning) after wait_s."""
        answer = self._ask(("connected", wait_s), timeout_s=wait_s + ANSWER_TIMEOUT_S + 30.0)  # 30: the start
        self.figures()  # its threads' names, for health to list should it die
        return bool(answer)

    def figures(self) -> Figures:
        """The worker's figures now; the last ones it gave, with its process marked dead, once it no longer answers."""
        answer = self._ask(("figures", None))
        if isinstance(answer, Figures):
            self._last = answer
            return answer
        return self._gone()

    def stop(self) -> None:
        """Tell the worker to finish what it holds and disconnect; kill it if it has not within STOP_TIMEOUT_S."""
        if self._process.pid is None:  # never started
            self._conn.close()
            return
        answer = self._ask(("stop", None), timeout_s=STOP_TIMEOUT_S)
        if isinstance(answer, Figures):
            self._last = answer
        self._process.join(timeout=5.0 if answer is not None else 0.0)
        if self._process.is_alive():
            log.error("ingest worker %s did not stop within %.0f s: killed", self.client_id, STOP_TIMEOUT_S)
            self._process.kill()
            self._process.join(timeout=5.0)
        self._conn.close()

    # what Ingest gives in the same names, for the callers that read one worker (tests, benchmarks)

    @property
    def counters(self) -> IngestCounters:
        return self.figures().counters

    @property
    def gap_counters(self) -> gaps.GapCounters:
        return self.figures().gap_counters

    @property
    def v2_counters(self) -> V2Counters:
        return self.figures().v2_counters

    def _gone(self) -> Figures:
        last = copy.copy(self._last)
        last.broker_connected = False
        last.queued = {}
        last.threads = {"ingest-process": False, **{name: False for name in self._last.threads}}
        return last

    def _ask(self, question: tuple[str, Any], timeout_s: float = ANSWER_TIMEOUT_S) -> Any:
        """The worker's answer to a question, or None if its process is gone or does not answer in time. Questions
        are numbered: an answer that comes after its question timed out is passed over, not taken for the next."""
        with self._lock:
            if not self._process.is_alive() or self._conn.closed:
                return None
            n = next(self._asked)
            try:
                self._conn.send((n, *question))
                while self._conn.poll(timeout_s):
                    answered, answer = self._conn.recv()
                    if answered == n:
                        return answer
            except (OSError, EOFError) as exc:
                log.error("ingest worker %s does not answer: %s", self.client_id, exc)
                return None
            log.error("ingest worker %s did not answer %r within %.0f s", self.client_id, question[0], timeout_s)
            return None


def _serve(
    settings: BackendSettings,
    client_id: str,
    lanes: tuple[str, ...],
    conn: Connection,
    log_level: int,
    settle_heap_s: float | None,
) -> None:
    """The worker process: run one Ingest and answer the backend's process until told to stop or left alone."""
    # Ctrl-C, and a service manager's SIGTERM, reach every process of the group: the backend's process stops its
    # workers itself, each after its last flush (or they stop when it is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=_LOG_FORMAT)
    ingest = Ingest(settings, client_id, lanes)
    settled = heap.SettlingThread(settle_heap_s) if settle_heap_s is not None else None
    ingest.start(wait_s=None)
    try:
        while True:
            try:
                n, question, arg = conn.recv()
            except (EOFError, OSError):
                log.warning("ingest worker %s: the backend's process is gone; stopping", client_id)
                break
            if question == "figures":
                _send_figures(conn, n, ingest)
            elif question == "connected":
                conn.send((n, ingest.wait_connected(arg)))
            elif question == "stop":
                ingest.stop()
                _send_figures(conn, n, ingest)
                return
    finally:
        if settled:
            settled.close()
    ingest.stop()
