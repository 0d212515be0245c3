"""Security headers on every response: nosniff, a strict Content-Security-Policy, no framing, a Referrer-Policy.

Scripts run only from our own files or with the response's nonce (the folium map pages, whose scripts are
inline, carry it); styles may be inline (Leaflet needs it); no page may be framed by another site, and only the
installer's page and the owner portal frame their maps.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_NONCE_KEY = "bikeguard.csp_nonce"
# The installer's page (installer.html), the owner portal (portal.js) and a shared bike's page (shared.html) show these
# maps in frames of their own; every other page refuses framing.
FRAMED_BY_OUR_PAGES = re.compile(
    r"/installer/map|/installer/coverage|/portal/bikes/[0-9]+/map|/shared/[A-Za-z0-9_-]+/map"
)
_INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bnonce=)", re.IGNORECASE)


def tile_source(tile_url: str | None) -> str | None:
    """The CSP source of a tile server URL template ({s} subdomains become a wildcard), or None for our own."""
    if not tile_url:
        return None
    parts = urlsplit(tile_url.replace("{s}", "*"))
    if not parts.scheme or not parts.netloc:
        return None  # a path on this site: 'self' already allows it
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(nonce: str, framed: bool, tile_origin: str | None = None) -> str:
    """The policy of one response: our own files, plus inline code that carries this response's nonce."""
    images = " ".join(filter(None, ("'self'", "data:", "blob:", tile_origin)))
    ancestors = "'self'" if framed else "'none'"
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' 'nonce-{nonce}'",
            # Leaflet and our map markers position and colour elements with style attributes; a nonce here would
            # make browsers ignore 'unsafe-inline'. Styles cannot run code: scripts stay strict.
            "style-src 'self' 'unsafe-inline'",
            f"img-src {images}",
            "font-src 'self' data:",
            "connect-src 'self'",
            "frame-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            f"frame-ancestors {ancestors}",
        )
    )


def csp_nonce(request: Request) -> str:
    """This response's nonce, for a page that must inline a script or style."""
    return str(request.scope[_NONCE_KEY])


def with_nonce(html: str, nonce: str) -> str:
    """Our own generated page (a folium map) with the nonce on each <script>: never for user-supplied HTML."""
    return _INLINE_SCRIPT.sub(f'<script nonce="{nonce}"', html)


class SecurityHeaders:
    """ASGI middleware: a fresh nonce per request and the security headers on every response."""

    def __init__(self, app: ASGIApp, tile_url: str | None = None) -> None:
        self.app = app
        self.tile_origin = tile_source(tile_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(18)
        scope[_NONCE_KEY] = nonce
        framed = FRAMED_BY_OUR_PAGES.fullmatch(scope["path"]) is not None
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"SAMEORIGIN" if framed else b"DENY"),
            (b"content-security-policy", content_security_policy(nonce, framed, self.tile_origin).encode()),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in extra if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)
