"""Issue 11, finding 3: the backend read any body whole before asking who was calling: 20 MB of JSON without
credentials grew it by ~100 MB before the 401, a 300 MB multipart upload streamed to a temp file, and a body sent
slowly held a worker. Bodies are now limited per route while they are read (a 413 before parsing, for anonymous
callers too), a body must arrive within a deadline (408), and headers are bounded by the server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from backend.api.app import create_app, server_config
from backend.api.middleware.limits import server_options
from bikeguard.services import free_port
from tests import factories
from tests.backend.test_ingest import wait_until

JSON_MAX = 64 * 1024
BODY_TIMEOUT_S = 1.5


@pytest.fixture
def server(database_url: str) -> Iterator[tuple[str, int]]:
    """The backend on a free port, run with the same server options as `bikeguard backend`."""
    port = free_port()
    settings = factories.settings(database_url, http_port=port, request_body_timeout_s=BODY_TIMEOUT_S)
    config = server_config(create_app(settings, run_ingest=False), "127.0.0.1", port, **server_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=30)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _request(address: tuple[str, int], head: str, body: bytes = b"", timeout_s: float = 10) -> tuple[int, float]:
    """Send a raw request (the head's lines, then `body`) and return the status line's code and the seconds taken;
    the body may be only a part of what Content-Length promises: the server must answer without the rest."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout_s) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        reply = b""
        try:
            while b"\r\n" not in reply:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except TimeoutError:
            return 0, time.monotonic() - started  # no answer: the server is still waiting for us
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else -1
    return status, time.monotonic() - started


def _head(path: str, length: int | None, content_type: str = "application/json") -> str:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\nHost: localhost\nContent-Type: {content_type}\n{framing}\n"


def test_anonymous_20_mb_json_is_refused_before_it_is_read(server: tuple[str, int]) -> None:
    # The head promises 20 MB and only 64 KiB follow: the answer must come without the rest.
    status, _ = _request(server, _head("/api/bikes", 20_000_000), b"{" + b" " * JSON_MAX)
    assert status == 413


def test_anonymous_300_mb_upload_is_refused_before_it_is_read(server: tuple[str, int]) -> None:
    head = _head("/api/bikes/1/photos", 300_000_000, "multipart/form-data; boundary=x")
    status, _ = _request(server, head, b"--x\r\n" + b"A" * 100_000)
    assert status == 413


def test_json_sent_in_chunks_is_counted_as_it_arrives(server: tuple[str, int]) -> None:
    chunk = b"A" * 32_768
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 3  # 96 KiB, never announced
    status, _ = _request(server, _head("/api/auth/login", None), body)
    assert status == 413


def test_photo_upload_in_chunks_past_the_photo_limit_is_refused(server: tuple[str, int]) -> None:
    part = b'--x\r\nContent-Disposition: form-data; name="photo"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    chunks = [part, *([b"B" * 1_000_000] * 3)]  # 3 MB of file: past the 2 MB photo rule
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    status, _ = _request(server, _head("/api/bikes/1/photos", None, "multipart/form-data; boundary=x"), body)
    assert status == 413


def test_a_body_sent_slowly_is_cut_off_at_the_deadline(server: tuple[str, int]) -> None:
    status, took_s = _request(server, _head("/api/auth/login", 100), b'{"username": ', timeout_s=BODY_TIMEOUT_S + 8)
    assert status == 408, f"no answer after {took_s:.1f} s"
    assert took_s < BODY_TIMEOUT_S + 5


def test_a_head_that_keeps_growing_is_refused(server: tuple[str, int]) -> None:
    """h11 buffers at most http_max_header_bytes of an unfinished head (its default; now a setting)."""
    with socket.create_connection(server, timeout=10) as conn:
        conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n")
        reply = b""
        for i in range(100):  # 100 KB of headers, never finished
            try:
                conn.sendall(f"X-Pad-{i}: {'p' * 1000}\r\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.005)
        try:
            reply = conn.recv(4096)
        except ConnectionResetError:
            reply = b""
    assert reply == b"" or reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), reply[:100]


def test_ordinary_requests_still_pass(server: tuple[str, int]) -> None:
    body = b'{"username": "nobody", "password": "wrong password"}'
    status, _ = _request(server, _head("/api/auth/login", len(body)), body)
    assert status == 401  # read, parsed and refused for what it says, not for its size
