"""The FastAPI application: pools (the primary's, and the replica's for heavy reads), ingest, live feed, station watch
and hot-list publisher opened in the lifespan; errors mapped in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import AsyncConnectionPool

from backend import access, accounts, certificates, hotlist, prediction, provisioning, recovery_followup, registry
from backend import stations as station_registry
from backend.alarms import station_watch, store
from backend.api.middleware.headers import SecurityHeaders
from backend.api.middleware.limits import BodyLimits
from backend.api.routes import accounts as account_routes
from backend.api.routes import alarms as alarm_routes
from backend.api.routes import audit as audit_routes
from backend.api.routes import (
    auth,
    bikes,
    health,
    hotsheet,
    live,
    notifications,
    owners,
    pages,
    shares,
    sightings,
    stations,
    webapp,
    zones,
)
from backend.api.routes import certificates as certificate_routes
from backend.api.routes import commands as command_routes
from backend.api.routes import provisioning as provisioning_routes
from backend.api.routes import statistics as statistics_routes
from backend.db.migrate import maintain, prepare_database
from backend.db.replica import Reads
from backend.ingest import rejects
from backend.ingest.workers import IngestWorkers
from backend.live import LiveFeed
from backend.metrics import registry_for
from backend.notifications import worker as notification_worker
from backend.settings import DEFAULT_SECRET, BackendSettings
from backend.vault import Vault
from backend.web import STATIC_DIR
from backend.zones import registry as zone_registry
from maps.assets import LEAFLET_DIR
from protocol import heap

log = logging.getLogger(__name__)

# Domain errors and the HTTP status each becomes; the body is {"detail": message[, "field": input][, "code": stable
# name, "params": the values in the message]} (backend.registry.ERROR_CODES).
_ERRORS: dict[type[Exception], int] = {
    registry.NotFound: 404,
    registry.Conflict: 409,
    registry.LimitReached: 409,
    registry.ConsentRequired: 403,
    registry.InvalidValue: 422,
    # The chip on the counter's cable (or the cable) is not in a state to be keyed: the clerk's to fix, never a 5xx.
    registry.ChipNotProgrammed: 409,
    registry.LookupThrottled: 429,
    store.AlarmNotFound: 404,
    store.AlarmStateError: 409,
    accounts.LoginFailed: 401,
    accounts.LoginThrottled: 429,
    accounts.AccountConflict: 409,
    accounts.AccountNotFound: 404,
    accounts.PasswordRejected: 422,
    access.Refused: 403,
    certificates.CertificateNotFound: 404,
    certificates.GlyphMissing: 422,  # a name the certificate font cannot print: said, not a blank box
    station_registry.StationNotFound: 404,
    station_registry.StationExists: 409,
    station_registry.LifecycleError: 409,
    station_registry.VendorDeviceTaken: 409,
    station_registry.VendorStationDecommissioned: 409,
    station_registry.VendorDeviceError: 422,
    provisioning.StationDecommissioned: 409,
    zone_registry.InvalidZone: 422,
    zone_registry.ZoneNotFound: 404,
    zone_registry.ZoneExists: 409,
    # Input PostgreSQL cannot store (a NUL character, a number out of range) is the caller's error.
    psycopg.errors.DataError: 422,
}


async def _maintain_storage(settings: BackendSettings, pool: AsyncConnectionPool) -> None:
    """Now and then every maintenance_interval_s: partitions ahead, retention by whole days, old logins and
    sessions, rejected messages past their retention, and the station transitions behind the interception points."""
    every_s = settings.maintenance_interval_s
    while True:
        try:
            created, dropped = await asyncio.to_thread(
                maintain, settings.database_url, settings.partition_days_ahead, settings.retention_days
            )
            async with pool.connection() as conn:
                await accounts.prune(conn, settings)
                await rejects.prune(conn, settings.rejected_retention_days)
                await prediction.refresh(conn)
        except Exception:  # noqa: BLE001 - any failure is retried next time; the ingest must go on
            log.exception("storage maintenance failed; will retry in %.0f s", every_s)
        else:
            if created or dropped:
                log.info("storage maintenance: %d partitions created, %d days dropped", created, dropped)
        await asyncio.sleep(every_s)


def _status_of(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in _ERRORS:
            return _ERRORS[cls]
    raise exc


def server_config(app: FastAPI, host: str, port: int, **limits: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app, with `limits` (backend.api.middleware.limits.server_options). Its own
    X-Forwarded-For handling is off: it believes the header from 127.0.0.1 by default, so any local client could
    claim any address; backend.api.deps.client_address decides."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=False, **limits)


def create_app(
    settings: BackendSettings,
    run_ingest: bool = True,
    clock: hotlist.Clock = time.time,
    settle_heap_s: float | None = None,
) -> FastAPI:
    """The backend app; with run_ingest it also consumes station messages from the broker. `clock` (Unix seconds)
    decides the hot list's eid windows (a test moves it instead of waiting for a window to pass).

    `settle_heap_s`: freeze the process's heap that long after start, then collect it on a schedule
    (protocol.heap.settle). The backend's own process does (`bikeguard backend`): a flush of v2 beacons keeps a
    few objects per beacon alive until it commits, and the full collections they set off, each walking every
    message waiting in the ingest's lane, took more of a v2 sighting's time than its resolution did. An app in a
    test need not.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(prepare_database, settings)
        pool = AsyncConnectionPool(
            settings.database_url, min_size=2, max_size=10, open=False, check=AsyncConnectionPool.check_connection
        )
        await pool.open(wait=True)
        reads = Reads(settings)
        await reads.open()
        feed = LiveFeed(settings.database_url, pool)
        feed.start()
        # The hot list is the API's to publish (a theft report changes it), with a client of its own: a process
        # that does not ingest publishes it all the same.
        publisher = hotlist.HotlistPublisher(settings)
        publisher.start()
        worker = IngestWorkers(settings, settle_heap_s) if run_ingest else None
        if worker:
            await asyncio.to_thread(worker.start)

        vault: Vault = app.state.registry.vault

        async def publish_hotlist() -> None:
            async with pool.connection() as conn:
                message = await hotlist.issue_hotlist(
                    conn, vault, now_s=clock(), eid_windows_count=settings.hotlist_eid_windows
                )
            publisher.publish(message)
            v2 = max((len(e) for e in (message.eids or {}).values()), default=0)
            log.info("hot list version %d: %d chips by tag id, %d by eids", message.version, len(message.tags), v2)

        app.state.settings = settings
        app.state.pool = pool
        app.state.reads = reads
        app.state.passwords = await asyncio.to_thread(accounts.Passwords, settings)
        app.state.live = feed
        app.state.ingest = worker
        app.state.metrics = registry_for(worker, reads)
        app.state.publish_hotlist = publish_hotlist
        app.state.publisher = publisher
        await publish_hotlist()
        settling = (
            asyncio.create_task(heap.settle(settle_heap_s), name="heap-settle") if settle_heap_s is not None else None
        )
        maintenance = asyncio.create_task(_maintain_storage(settings, pool), name="storage-maintenance")
        watch = asyncio.create_task(
            station_watch.watch_stations(pool, settings.station_watch_interval_s), name="station-watch"
        )
        followup = asyncio.create_task(recovery_followup.follow_up(pool, settings), name="recovery-follow-up")
        # Stolen v2 chips' eids run out as the windows pass: a new list each window while one is on it.
        renewal = asyncio.create_task(
            hotlist.renew_hotlists(pool, vault, publisher.publish, settings, clock), name="hotlist-renewal"
        )
        # Owners' notifications: the outbox's sender (any number of processes may run one; they share the rows).
        sender = (
            asyncio.create_task(notification_worker.Sender(settings).run(), name="notification-sender")
            if settings.notify_in_backend
            else None
        )
        try:
            yield
        finally:
            if settling:
                settling.cancel()  # the collector back on as it was
                with contextlib.suppress(asyncio.CancelledError):
                    await settling
            maintenance.cancel()
            watch.cancel()
            followup.cancel()
            renewal.cancel()
            if sender:
                sender.cancel()
                # Its own connection closes before the pool's: nothing of the app outlives the lifespan.
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            await feed.stop()
            if worker:
                await asyncio.to_thread(worker.stop)
            await asyncio.to_thread(publisher.stop)
            await reads.close()
            await pool.close()

    if settings.environment == "development" and any(
        s.get_secret_value() == DEFAULT_SECRET
        for s in (settings.id_encryption_key, settings.id_lookup_key, settings.certificate_signing_key)
    ):
        log.warning("development settings: placeholder secrets in use; never run like this with real data")

    app = FastAPI(title="Bikeguard", version="0.1.0", lifespan=lifespan)
    # Needed before the lifespan runs (routes and pages are built with them); they hold no connections.
    app.state.settings = settings
    app.state.registry = registry.Registry(settings, Vault.from_settings(settings))
    app.state.signer = certificates.Signer(settings.certificate_signing_key.get_secret_value())
    app.state.ingest = None
    app.state.metrics = registry_for(None)
    for router in (
        health.router,
        auth.router,
        account_routes.router,
        audit_routes.router,
        owners.router,
        bikes.router,
        shares.router,
        certificate_routes.router,
        stations.router,
        provisioning_routes.router,
        command_routes.router,
        sightings.router,
        alarm_routes.router,
        notifications.router,
        webapp.router,
        live.router,
        hotsheet.router,
        zones.router,
        statistics_routes.router,
        pages.router,
    ):
        app.include_router(router)
    # The last added is the outermost: a refused body's 413 or 408 carries the security headers too.
    app.add_middleware(BodyLimits, settings=settings)
    app.add_middleware(SecurityHeaders, tile_url=settings.tile_url)
    app.mount("/assets/leaflet", StaticFiles(directory=LEAFLET_DIR), name="leaflet")
    app.mount("/assets/web", StaticFiles(directory=STATIC_DIR), name="web")

    async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        if isinstance(exc, psycopg.errors.DataError):
            body = {"detail": f"a value could not be stored: {exc.diag.message_primary or 'invalid data'}"}
        if getattr(exc, "field", None):
            body["field"] = exc.field  # type: ignore[attr-defined]
        if getattr(exc, "code", None):  # a stable name for the refusal, for pages that word it in their language
            body["code"] = exc.code  # type: ignore[attr-defined]
            body["params"] = exc.params  # type: ignore[attr-defined]
        headers = {}
        if isinstance(exc, (accounts.LoginThrottled, registry.LookupThrottled)):
            headers["Retry-After"] = str(exc.retry_after_s)
        return JSONResponse(body, status_code=_status_of(exc), headers=headers)

    for exc_type in _ERRORS:
        app.add_exception_handler(exc_type, domain_error)

    return app
