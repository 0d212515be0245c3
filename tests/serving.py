"""The backend served by uvicorn on a free port in a thread, for tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from backend.api.app import server_config
from tests.backend.test_ingest import wait_until


@contextlib.contextmanager
def served(app: FastAPI, port: int) -> Iterator[str]:
    """Serve `app` on 127.0.0.1:port until the block ends; yields its base URL."""
    server = uvicorn.Server(server_config(app, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
