"""The owner portal as an installable web app: its manifest and its service worker (which shows Web Push
notifications), served under /portal so the worker's scope is the portal and nothing else."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from backend.web import STATIC_DIR

router = APIRouter(tags=["pages"], include_in_schema=False)

_MANIFEST = {
    "name": "Bikeguard · 我的车辆 · My bikes",
    "short_name": "Bikeguard",
    "start_url": "/portal",
    "scope": "/portal",
    "display": "standalone",
    "background_color": "#ffffff",
    "theme_color": "#1f5f8b",
    "icons": [{"src": "/assets/web/icon.svg", "sizes": "any", "type": "image/svg+xml", "purpose": "any"}],
}


@router.get("/portal/manifest.webmanifest")
async def manifest() -> Response:
    """The web app manifest: the portal opens on its own, like an app, from the phone's home screen."""
    return JSONResponse(_MANIFEST, media_type="application/manifest+json", headers={"Cache-Control": "no-cache"})


@router.get("/portal/sw.js")
async def service_worker() -> Response:
    """The service worker, allowed the scope /portal (the page itself, not only what lies under /portal/)."""
    return Response(
        (STATIC_DIR / "sw.js").read_bytes(),
        media_type="text/javascript",
        # Browsers check for a new worker against this file: never a stale copy from a cache.
        headers={"Service-Worker-Allowed": "/portal", "Cache-Control": "no-cache"},
    )
