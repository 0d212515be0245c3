"""Local stand-ins for the providers the notification channels talk to: an SMS gateway and a Web Push service over
real HTTP, and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    """One HTTP request a stand-in saw."""

    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class HttpStandIn:
    """An HTTP provider: records every request; answers `status` (or the next of `fail_with`) after `delay_s`.

    Like an SMS gateway that honours an idempotency key, it delivers a message once per Idempotency-Key: a repeat
    is answered 200 and not delivered again.
    """

    status: int = 200
    delay_s: float = 0.0
    fail_with: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    delivered: dict[str, Received] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, received: Received) -> int:
        """Record a request; the status to answer."""
        with self.lock:
            self.requests.append(received)
            if self.fail_with:
                return self.fail_with.pop(0)
            key = received.headers.get("idempotency-key") or received.headers.get("topic") or str(len(self.requests))
            # Accepted when received: a client that dies before the answer does not undo it.
            if key in self.delivered:
                self.duplicates.append(key)
            else:
                self.delivered[key] = received
            return self.status


@contextmanager
def http_standin(**kwargs: Any) -> Iterator[HttpStandIn]:
    """An HttpStandIn listening on 127.0.0.1 in a thread."""
    standin = HttpStandIn(**kwargs)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = standin.handle(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if standin.delay_s:
                time.sleep(standin.delay_s)
            reply = json.dumps({"message_id": f"m{len(standin.requests)}"}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    standin.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[tuple[int, _Mailbox]]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1: its port and its mailbox."""
    mailbox = _Mailbox()
    # aiosmtpd connects to its own port to see it is up, so it needs a real one, not 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()
