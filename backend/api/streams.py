"""Server-sent event streams that end with the session they were opened under.

A stream stays open for hours; signing out, an expired session or a disabled account must close it, not
only refuse the next request. The session is checked again at each keep-alive comment (every
`live_keepalive_s` when idle) and at least that often when events are flowing; when it is no longer valid
the viewer gets `event: signed-out` and the stream ends (the page then asks to sign in again).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator

from fastapi import Request
from fastapi.responses import StreamingResponse
from psycopg_pool import AsyncConnectionPool

from backend import accounts

SIGNED_OUT = b"event: signed-out\ndata: {}\n\n"


async def still_signed_in(pool: AsyncConnectionPool, token: str) -> bool:
    """Whether the session of this token is still valid (not expired, revoked or of a disabled account)."""
    async with pool.connection() as conn:
        return await accounts.session_user(conn, token) is not None


async def while_signed_in(
    events: AsyncGenerator[bytes, None], pool: AsyncConnectionPool, token: str, recheck_s: float
) -> AsyncGenerator[bytes, None]:
    """The events, until the session of `token` ends; then `event: signed-out` and the end."""
    checked = time.monotonic()
    async with contextlib.aclosing(events):
        async for chunk in events:
            if chunk.startswith(b":") or time.monotonic() - checked >= recheck_s:
                checked = time.monotonic()
                if not await still_signed_in(pool, token):
                    yield SIGNED_OUT
                    return
            yield chunk


def event_stream(request: Request, events: AsyncGenerator[bytes, None], token: str | None) -> StreamingResponse:
    """The response of a live route: its events as text/event-stream, for as long as the session lasts."""
    state = request.app.state
    if token is not None:
        events = while_signed_in(events, state.pool, token, state.settings.live_keepalive_s)
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
