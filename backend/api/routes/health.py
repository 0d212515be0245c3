"""Liveness, readiness and metrics: answered without the pool, so they answer while the database is stuck."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.accounts import STAFF_ROLES
from backend.api.deps import allow, anyone
from backend.ingest.workers import IngestWorkers

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/api/health", dependencies=[anyone()])
async def health() -> dict[str, str]:
    """Anyone: liveness, the process answers (no database); nothing more to an anonymous caller."""
    return {"status": "ok"}


@router.get("/api/health/ingest", dependencies=[allow(*STAFF_ROLES)])
async def ingest_health(request: Request) -> dict[str, Any]:
    """Staff: the ingest's threads and counters, live viewers (no personal data). The session is looked up in the
    database; /metrics gives the same figures without it, for operators on the internal network."""
    live = getattr(request.app.state, "live", None)
    # Read in a thread: worker processes answer over a pipe, which must not hold up the event loop.
    ingest = await asyncio.to_thread(_ingest_figures, request.app.state.ingest)
    return {"status": "ok", "live_viewers": live.viewers if live else 0, "ingest": ingest}


def _ingest_figures(ingest: IngestWorkers | None) -> dict[str, Any] | None:
    if ingest is None:
        return None
    c = ingest.counters
    return {
        "broker_connected": ingest.broker_connected,
        "threads": ingest.threads(),
        "queued": ingest.queued(),
        "messages": c.messages,
        "sightings": c.sightings,
        "batches_new": c.batches_new,
        "batches_repeated": c.batches_repeated,
        "batches_conflicting": c.batches_conflicting,
        "batches_confirmed": c.batches_confirmed,
        "confirmations": c.confirmations,
        "alerts": c.alerts,
        "rejected": dict(c.rejected),
        "db_retries": c.db_retries,
    }


@router.get("/api/ready", dependencies=[anyone()], responses={503: {"description": "not ready: the database is away"}})
async def ready(request: Request) -> JSONResponse:
    """Anyone: 200 when the database answers within ready_timeout_s, else 503 with the reason."""
    settings = request.app.state.settings
    reason = await database_refusal(settings.database_url, settings.ready_timeout_s)
    if reason is not None:
        return JSONResponse({"status": "not ready", "database": reason}, status_code=503)
    return JSONResponse({"status": "ready", "database": "ok"})


async def database_refusal(database_url: str, timeout_s: float) -> str | None:
    """Why the database is not usable now (None: it answered), asking on a fresh connection: the pool's
    connections may be the ones stuck, and waiting for one of them is what must not happen here."""
    try:
        # connect_timeout bounds the connection (psycopg's own wait, so cancelling it is harmless); the outer
        # bound covers the query on a server that accepted us and then stopped.
        async with asyncio.timeout(timeout_s):
            conn = await psycopg.AsyncConnection.connect(
                database_url, connect_timeout=max(2, round(timeout_s)), autocommit=True
            )
    except TimeoutError:
        return f"the database did not answer within {timeout_s:g} s"
    except psycopg.OperationalError as exc:
        # The detail (host, port, user) is for the log, not for anyone who asks.
        log.warning("readiness: the database is unavailable: %s", str(exc).strip())
        return "the database is unavailable (connection refused or failed; see the log)"
    try:
        async with asyncio.timeout(timeout_s):
            await conn.execute("SELECT 1")
    except TimeoutError:
        return f"the database did not answer within {timeout_s:g} s"
    except psycopg.Error as exc:
        log.warning("readiness: the database refused SELECT 1: %s", str(exc).strip())
        return "the database refused a query (see the log)"
    finally:
        await conn.close()
    return None


@router.get("/metrics", dependencies=[anyone()], include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Anyone who can reach it (operators on the internal network): the Prometheus text format, no personal data."""
    # In a thread, as above: the ingest's figures may come from worker processes.
    body = await asyncio.to_thread(generate_latest, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
