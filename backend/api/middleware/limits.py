"""Request limits, enforced before anything is parsed and before anyone is asked who is calling.

A body may have at most its route's bytes (a bike photo: the photo rule plus the multipart envelope; anything
else is JSON: small), counted as it arrives, whatever Content-Length says or does not say (chunked), and it must
arrive within a deadline. A body past its limit is a 413, one too slow a 408; the server (uvicorn, with
`server_options`) bounds a request's head and how long an idle connection is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.settings import BackendSettings

# The multipart envelope around a photo: boundaries, part headers, a file name.
MULTIPART_ENVELOPE_BYTES = 16 * 1024
_PHOTO_UPLOAD = re.compile(r"^/api/bikes/[^/]+/photos/?$")


class RequestRefused(Exception):
    """A request body refused while it was being read: the status and the reason to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def server_options(settings: BackendSettings) -> dict[str, Any]:
    """The uvicorn options that bound a request's head and idle connections (`bikeguard backend` uses them)."""
    return {
        "http": "h11",  # the parser whose head limit we set (httptools has none to set)
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "timeout_keep_alive": settings.http_keep_alive_s,
    }


class BodyLimits:
    """ASGI middleware: the body limit of each route and the body deadline, for every caller."""

    def __init__(self, app: ASGIApp, settings: BackendSettings) -> None:
        self.app = app
        self.json_max_bytes = settings.request_json_max_bytes
        self.photo_max_bytes = settings.photo_max_bytes + MULTIPART_ENVELOPE_BYTES
        self.timeout_s = settings.request_body_timeout_s

    def limit_of(self, method: str, path: str) -> int:
        """The most bytes a body of this route may have."""
        return self.photo_max_bytes if method == "POST" and _PHOTO_UPLOAD.match(path) else self.json_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, RequestRefused(413, f"the body may have at most {limit} bytes; {declared} announced"))
            return
        deadline = time.monotonic() + self.timeout_s
        received = 0
        refused: RequestRefused | None = None
        started = False

        body_done = False

        async def counted_receive() -> Message:
            nonlocal received, refused, body_done
            if body_done:  # later calls wait for the client to leave (a live feed): no deadline on that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                refused = RequestRefused(408, f"the body did not arrive within {self.timeout_s:g} s")
                raise refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    refused = RequestRefused(413, f"the body may have at most {limit} bytes")
                    raise refused
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None and not started:
                return  # the app's answer to a body it could not read; ours goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # Refused while reading: the app gave up (FastAPI may also turn it into a 400, never sent); we answer below.
        with contextlib.suppress(RequestRefused):
            await self.app(scope, counted_receive, guarded_send)
        if refused is not None and not started:
            await _refuse(send, refused)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


async def _refuse(send: Send, refusal: RequestRefused) -> None:
    body = json.dumps({"detail": refusal.reason}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),  # the rest of the body is never read: the connection cannot be reused
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
