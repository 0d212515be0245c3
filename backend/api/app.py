"""The FastAPI application: pool, ingest and live feed opened in the lifespan; errors mapped in one place."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool

from backend import alarms, hotlist, registry
from backend.api.routes import alarms as alarm_routes
from backend.api.routes import bikes, live, pages, sightings, stations
from backend.db.migrate import maintain, migrate
from backend.ingest.consumer import Ingest
from backend.live import LiveFeed
from backend.settings import BackendSettings
from maps.assets import LEAFLET_DIR
from protocol import topics

log = logging.getLogger(__name__)

_ERRORS: dict[type[Exception], int] = {
    registry.NotFound: 404,
    registry.Conflict: 409,
    alarms.AlarmNotFound: 404,
    alarms.AlarmStateError: 409,
}


async def _maintain_storage(settings: BackendSettings, every_s: float = 3600.0) -> None:
    """Hourly: partitions for the days ahead, retention by dropping whole days."""
    while True:
        await asyncio.sleep(every_s)
        try:
            created, dropped = await asyncio.to_thread(
                maintain, settings.database_url, settings.partition_days_ahead, settings.retention_days
            )
        except Exception:  # noqa: BLE001 - any failure is retried next hour; the ingest must go on
            log.exception("storage maintenance failed; will retry in %.0f s", every_s)
            continue
        if created or dropped:
            log.info("storage maintenance: %d partitions created, %d days dropped", created, dropped)


def create_app(settings: BackendSettings, run_ingest: bool = True) -> FastAPI:
    """The backend app; with run_ingest it also consumes station messages from the broker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(migrate, settings.database_url, settings.partition_days_ahead)
        pool = AsyncConnectionPool(settings.database_url, min_size=2, max_size=10, open=False,
                                   check=AsyncConnectionPool.check_connection)
        await pool.open(wait=True)
        feed = LiveFeed(settings.database_url, pool)
        feed.start()
        worker = Ingest(settings) if run_ingest else None
        if worker:
            await asyncio.to_thread(worker.start)

        async def publish_hotlist() -> None:
            async with pool.connection() as conn:
                message = await hotlist.issue_hotlist(conn)
            if worker:
                worker.client.publish(topics.HOTLIST, message.to_json(), qos=1, retain=True)
            log.info("hot list version %d: %d chips", message.version, len(message.tags))

        app.state.settings = settings
        app.state.pool = pool
        app.state.live = feed
        app.state.ingest = worker
        app.state.publish_hotlist = publish_hotlist
        await publish_hotlist()
        maintenance = asyncio.create_task(_maintain_storage(settings), name="storage-maintenance")
        try:
            yield
        finally:
            maintenance.cancel()
            await feed.stop()
            if worker:
                await asyncio.to_thread(worker.stop)
            await pool.close()

    app = FastAPI(title="Bikeguard", version="0.1.0", lifespan=lifespan)
    for router in (stations.router, sightings.router, alarm_routes.router, bikes.router, live.router, pages.router):
        app.include_router(router)
    app.mount("/assets/leaflet", StaticFiles(directory=LEAFLET_DIR), name="leaflet")

    async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_ERRORS[type(exc)])

    for exc_type in _ERRORS:
        app.add_exception_handler(exc_type, domain_error)

    @app.get("/api/health", tags=["health"])
    async def health() -> dict[str, Any]:
        """Liveness plus the ingest counters."""
        c = app.state.ingest.counters if app.state.ingest else None
        return {
            "status": "ok",
            "live_viewers": app.state.live.viewers,
            "ingest": None if c is None else {
                "messages": c.messages, "sightings": c.sightings, "batches_new": c.batches_new,
                "batches_repeated": c.batches_repeated, "alerts": c.alerts, "rejected": dict(c.rejected),
                "db_retries": c.db_retries,
            },
        }

    return app
