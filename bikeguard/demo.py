"""`bikeguard demo`: a simulated town end to end on real parts, on this machine.

PostgreSQL (embedded) and an MQTT broker (Mosquitto if installed, else embedded amqtt), the backend
on 127.0.0.1, a town of stations and bikes whose radio modules write real frames into ptys, one
gateway per station reading them - but a few stations (--vendor-stations) are simulated MR7901 vendor
stations talking TCP to the vendor bridge, run beside the gateways - and one bike stolen after a while
and reported by its owner.
Ctrl-C, SIGTERM (a service manager) and SIGHUP (a closed terminal) stop everything; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
from pydantic import SecretStr

from backend import accounts, provisioning
from backend.identity import check_character
from backend.settings import BackendSettings, random_secrets
from bikeguard.services import (
    BACKEND_USER,
    Broker,
    Postgres,
    ServiceError,
    default_engine,
    engine_preload,
    start_broker,
    start_postgres,
    stop_processes,
)
from firmware_sim.programmer import ChipOnCable
from firmware_sim.runner import vendor_device_ids
from firmware_sim.tag_v2 import ChipMemory, write_chips
from firmware_sim.town import Bike, Town, v2_bikes
from gateway.settings import GatewaySettings
from gateway.station import run_fleet
from gateway.vendor.bridge import Bridge, BridgeSettings
from gateway.vendor.devices import VendorDevice, devices_toml, load_devices
from protocol.messages import format_tag
from protocol.signing import public_key_of

log = logging.getLogger("bikeguard.demo")


def _say(text: str) -> None:
    try:
        print(f"[demo] {text}", flush=True)
    except OSError:
        # The terminal is gone (a hangup, a closed pipe): say nothing more (print to None does nothing), and stop
        # all the same.
        sys.stdout = None


class Stopped(BaseException):
    """A signal asked the demo to stop.

    A BaseException like KeyboardInterrupt, so that no `except Exception` on the way catches it before the clean-up.
    """


class StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP all stop the demo the same way: the first raises Stopped in the main thread, so the
    clean-up runs; once it runs, later ones are ignored, so they cannot cut it short."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.stopping = False
        self._held: str | None = None  # "" while a part starts, then the name of a signal that came meanwhile
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            # A signal ignored when we started stays ignored (nohup ignores hangups, a background job Ctrl-C).
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._stop)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold a stop signal while a part starts, so that the part is in hand to be stopped when the signal acts."""
        self._held = ""
        try:
            yield
        finally:
            name, self._held = self._held, None
        if name and not self.stopping:
            self.stopping = True
            raise Stopped(name)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        name = signal.Signals(signum).name
        if self._held == "":
            self._held = name  # acted on when the part has started; a second signal does not wait (a start may hang)
            return
        self.stopping = True
        raise Stopped(name)


def town_roads_geojson(town: Town) -> dict[str, Any]:
    """The town's roads as GeoJSON LineStrings (lon, lat)."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"name": None},
                "geometry": {"type": "LineString", "coordinates": [[lon, lat] for lat, lon in road]},
            }
            for road in town.roads
        ],
    }


@dataclass(frozen=True)
class Login:
    """A username and password the demo made."""

    username: str
    password: str


@dataclass
class DemoAccounts:
    """Who the demo signed up: staff, and each bike's owner with the password on their counter slip."""

    admin: Login
    installer: Login
    clerk: Login
    police: Login
    owners: dict[str, tuple[int, Login]] = field(default_factory=dict)  # plate -> (bike id, first login)


def _password() -> str:
    return secrets.token_urlsafe(12)


def sign_in(base_url: str, login: Login) -> httpx.Client:
    """An HTTP client signed in as this account (Bearer token)."""
    r = httpx.post(
        f"{base_url}/api/auth/login",
        json={"username": login.username, "password": login.password, "token_in_body": True},
        timeout=30,
    )
    if r.status_code != 200:
        raise ServiceError(f"signing in as {login.username} failed: {r.status_code} {r.text}")
    return httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {r.json()['token']}"})


def _migrated_as_owner(server_url: str) -> str:
    """Migrate the embedded server's database as its owner and make the application role the backend connects as,
    as production does (docs/operations.md); returns the application role's URL."""
    from backend.db.migrate import migrate
    from bikeguard.services import create_login_role

    app_url = create_login_role(server_url, "bikeguard_app", secrets.token_urlsafe(24))
    migrate(server_url, app_role="bikeguard_app")
    return app_url


def bootstrap_admin(database_url: str) -> Login:
    """The first admin, made straight in the database as `bikeguard account create` does."""
    admin = Login("admin", _password())
    accounts.bootstrap(
        BackendSettings(environment="development", database_url=database_url),
        admin.username,
        admin.password,
        "admin",
        "Demo admin",
    )
    return admin


def demo_owner(bike_no: int, name: str) -> dict[str, Any]:
    """A made-up but valid identity for a demo bike's owner."""
    born = f"1985{1 + bike_no % 12:02d}{1 + bike_no % 28:02d}"
    first17 = f"{330100 + bike_no // 1000 % 100:06d}{born}{bike_no % 1000:03d}"
    return {
        "name": name,
        "id_number": first17 + check_character(first17),
        "mobile": f"139{bike_no:08d}",
        "address": f"{bike_no} Demo Street, West Lake District",
        "create_account": True,
    }


def seed_backend(
    base_url: str,
    town: Town,
    admin: Login,
    workers: int = 4,
    v2_bikes: Sequence[Bike] = (),
    cable: DemoCable | None = None,
) -> DemoAccounts:
    """Sign up staff as an admin would, register stations and roads as an installer, and every bike with
    its owner and chip at the counter as a clerk would: `v2_bikes` with a v2 chip keyed through `cable`."""
    staff = DemoAccounts(
        admin, Login("installer", _password()), Login("clerk", _password()), Login("police", _password())
    )
    with sign_in(base_url, admin) as api:
        for role, login, name in (
            ("installer", staff.installer, "Demo installer"),
            ("clerk", staff.clerk, "Demo clerk"),
            ("police", staff.police, "Officer on duty"),
        ):
            r = api.post(
                "/api/accounts",
                json={
                    "username": login.username,
                    "display_name": name,
                    "role": role,
                    "password": login.password,
                    "must_change_password": False,
                },
            )
            if r.status_code != 201:
                raise ServiceError(f"creating the {role} account failed: {r.status_code} {r.text}")
    stations = [{"station_id": s.station_id, "name": s.name, "lat": s.lat, "lon": s.lon} for s in town.stations]
    with sign_in(base_url, staff.installer) as api:
        api.put("/api/stations", json=stations).raise_for_status()
        api.put("/api/roads", json=town_roads_geojson(town)).raise_for_status()

    def register(clerk: httpx.Client, bike: Any, chip_kind: str = "v1") -> None:
        r = clerk.post(
            "/api/bikes",
            json={
                "chip_kind": chip_kind,
                "owner": demo_owner(bike.bike_no, bike.owner),
                "plate": bike.plate,
                "frame_number": f"DEMO{bike.bike_no:06d}F",
                "motor_number": f"DEMO{bike.bike_no:06d}M",
                "brand": "Yadea",
                "model": "DE-1",
                "colour": ("blue", "red", "white", "black")[bike.bike_no % 4],
                "tag_id": format_tag(bike.tag_id),
            },
        )
        if r.status_code != 201:
            raise ServiceError(f"registering {bike.plate} failed: {r.status_code} {r.text}")
        slip = r.json()["owner_login"]
        staff.owners[bike.plate] = (r.json()["bike"]["bike_id"], Login(slip["username"], slip["initial_password"]))

    v2 = {b.bike_no for b in v2_bikes}
    if v2 and cable is None:
        raise ServiceError("v2 chips are fitted through a programming cable, and none was given")
    with sign_in(base_url, staff.clerk) as clerk, ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda b: register(clerk, b), [b for b in town.bikes if b.bike_no not in v2]))
        # One cable at the counter: v2 chips one after the other, each keyed by the backend as the clerk fits it.
        for bike in v2_bikes:
            assert cable is not None
            with cable.chip(bike.tag_id) as chip:
                register(clerk, bike, "v2")
                cable.fitted.append(chip.memory())
    return staff


class DemoCable:
    """The fitting counter's programming cable: a fixed port (a symlink, as udev makes /dev/ttyUSB0) on which the
    chip being fitted answers; keeps what each chip it saw keyed holds, for the town's process to put on its bike."""

    def __init__(self, workdir: Path) -> None:
        self.port = str(workdir / "ttyBGCABLE")
        self.fitted: list[ChipMemory] = []

    @contextlib.contextmanager
    def chip(self, serial: int) -> Iterator[ChipOnCable]:
        """A blank simulated chip of this serial on the cable, taken off (and its pty closed) afterwards."""
        chip = ChipOnCable(serial)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.port)
            os.symlink(chip.port, self.port)
            yield chip
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.port)
            chip.close()


def start_demo_broker(backend_password: str, kind: str = "auto") -> Broker:
    """The demo's broker as production runs one: no anonymous client, the backend's user, the generated ACL.

    Stations are added once the installer has issued their credentials (`install_station_credentials`)."""
    return start_broker(kind, password=backend_password, acl=provisioning.acl_file([], BACKEND_USER))


def register_vendor_devices(installer: httpx.Client, vendor_ids: Mapping[str, str]) -> None:
    """Register each vendor station's device id and clock's time zone, as the installer does on their page."""
    for sid, device_id in vendor_ids.items():
        body = {"protocol": "mr7901", "device_id": device_id, "time_zone": VENDOR_TIME_ZONE}
        r = installer.put(f"/api/stations/{sid}/vendor-device", json=body)
        if r.status_code != 200:
            raise ServiceError(
                f"registering vendor device {device_id} for station {sid} failed: {r.status_code} {r.text}"
            )


def issue_station_credentials(installer: httpx.Client, station_ids: list[str]) -> dict[str, str]:
    """Each station's MQTT password, issued by the installer through the API as on a real commissioning."""
    passwords: dict[str, str] = {}
    for sid in station_ids:
        r = installer.post(f"/api/stations/{sid}/credentials")
        if r.status_code != 201:
            raise ServiceError(f"issuing credentials for station {sid} failed: {r.status_code} {r.text}")
        passwords[sid] = r.json()["password"]
    return passwords


def install_station_credentials(
    broker: Broker, database_url: str, backend_password: str, issued: Mapping[str, str]
) -> None:
    """Generate the broker's password and ACL files from the database, as `bikeguard broker files` does, and reload
    the broker with them (SIGHUP, as `systemctl reload`); return once it takes the issued passwords."""

    async def generate() -> tuple[str, str]:
        async with await psycopg.AsyncConnection.connect(database_url) as conn:
            return await provisioning.broker_files(conn, BACKEND_USER, provisioning.password_hash(backend_password))

    passwords, acl = asyncio.run(generate())
    broker.install(passwords, acl)
    deadline = time.monotonic() + 15
    for sid, password in issued.items():
        while not broker.accepts(sid, password):
            if time.monotonic() > deadline:
                raise ServiceError(f"the {broker.kind} broker did not take station {sid}'s new password")
            time.sleep(0.05)


def wait_for_http(url: str, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until url answers 200 (or the process serving it dies)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceError(f"the backend exited with code {process.returncode}; see its log above")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise ServiceError(f"{url} did not answer within {timeout_s:.0f} s")


class GatewayFleet:
    """The stations' software, all in one asyncio loop on a thread of this process: one gateway per station on a pty
    (`settings`), and whatever else `add` gives it (the vendor stations' bridge)."""

    def __init__(self, settings: Sequence[GatewaySettings] = ()) -> None:
        self._settings = list(settings)
        self._loop = asyncio.new_event_loop()
        self._tasks: list[asyncio.Task[None]] = []
        self._thread = threading.Thread(target=self._run, name="gateway-fleet", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> None:
        """Start the loop and every gateway of `settings`."""
        self._thread.start()
        if self._settings:
            self.add(run_fleet(self._settings))

    def add(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (`run_fleet(...)`, `bridge.run()`) on the fleet's loop until it ends or the fleet stops."""

        def spawn() -> None:
            task = self._loop.create_task(work)
            task.add_done_callback(_log_failure)
            self._tasks.append(task)

        self._loop.call_soon_threadsafe(spawn)

    def stop(self) -> None:
        """Stop every gateway cleanly (open passages are spooled, status goes offline), then the loop."""
        if not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(TimeoutError):  # what did not stop by then goes with the process
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed; its stations are down", task.get_coro(), exc_info=exc)


VENDOR_TIME_ZONE = "Asia/Shanghai"  # the town's: the vendor stations' clocks keep local time
VENDOR_STATIONS = 2  # how many of the town's stations are vendor stations unless --vendor-stations says


def vendor_stations_asked(args: argparse.Namespace) -> int:
    """How many of the town's stations run as vendor stations: --vendor-stations, else VENDOR_STATIONS (at most
    all of them); ServiceError if the town has fewer stations than asked for."""
    stations: int = args.stations
    asked: int | None = args.vendor_stations
    if asked is None:
        return min(VENDOR_STATIONS, stations)
    if not 0 <= asked <= stations:
        raise ServiceError(f"--vendor-stations {asked}: the town has {stations} stations")
    return asked


def start_vendor_bridge(
    fleet: GatewayFleet,
    workdir: Path,
    device_ids: Mapping[str, str],
    station_urls: Mapping[str, str],
    station_overrides: Mapping[str, Any],
    timeout_s: float = 15.0,
) -> tuple[str, Path]:
    """Write the devices file for the vendor stations (station id -> device id; each its station's broker URL) as
    an installer would, start the bridge on the fleet's loop and return the HOST:PORT it listens on and the file."""
    devices_file = workdir / "vendor-devices.toml"
    devices = [
        VendorDevice(device_id, sid, ZoneInfo(VENDOR_TIME_ZONE), SecretStr(station_urls[sid]))
        for sid, device_id in device_ids.items()
    ]
    devices_file.touch(mode=0o600)  # it holds the stations' broker passwords
    devices_file.write_text(devices_toml(devices), encoding="utf-8")
    settings = BridgeSettings(listen="127.0.0.1:0", devices_file=devices_file, spool_dir=workdir)
    bridge = Bridge(settings, load_devices(devices_file), station_overrides=station_overrides)
    fleet.add(bridge.run())
    deadline = time.monotonic() + timeout_s
    while bridge.port is None:  # set by the bridge's thread once it listens
        if time.monotonic() > deadline:
            raise ServiceError(f"the vendor bridge did not listen within {timeout_s:.0f} s; see its log above")
        time.sleep(0.05)
    return f"127.0.0.1:{bridge.port}", devices_file


def _lines(proc: subprocess.Popen[str]) -> Iterator[dict[str, Any]]:
    assert proc.stdout is not None
    for line in proc.stdout:
        with contextlib.suppress(json.JSONDecodeError):
            yield json.loads(line)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C, SIGTERM or SIGHUP (or --duration); whichever way it stops, it stops all it
    started."""
    with StopSignals() as stop_signals:
        return _run(args, stop_signals)


def _run(args: argparse.Namespace, stop_signals: StopSignals) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="bikeguard-demo-"))
    pg: Postgres | None = None
    broker: Broker | None = None
    backend: subprocess.Popen[bytes] | None = None
    sim: subprocess.Popen[str] | None = None
    fleet: GatewayFleet | None = None
    try:
        vendor_count = vendor_stations_asked(args)
        database_url = os.environ.get("BIKEGUARD_DATABASE_URL")
        if not database_url:
            with stop_signals.held():
                # On TimescaleDB when it is installed into the embedded PostgreSQL (docs/operations.md).
                pg = start_postgres(workdir / "pgdata", preload=engine_preload(default_engine()))
            database_url = _migrated_as_owner(pg.url)
            _say("PostgreSQL (embedded) started, migrated as its owner; the backend connects as bikeguard_app")
        mqtt_url = os.environ.get("BIKEGUARD_MQTT_URL")
        shared = os.environ.get("BIKEGUARD_MQTT_SHARED_GROUP", "bikeguard-ingest")
        backend_mqtt_password = secrets.token_urlsafe(18)
        if not mqtt_url:
            with stop_signals.held():
                broker = start_demo_broker(backend_mqtt_password)
            mqtt_url = broker.url
            shared = shared if broker.supports_shared_subscriptions else ""
            _say(f"MQTT broker ({broker.kind}) on {broker.anonymous_url}: no anonymous clients, the generated ACL")

        base = f"http://127.0.0.1:{args.port}"
        # Fresh random keys for this run: the demo's database is thrown away with them.
        env = {
            **os.environ,
            "BIKEGUARD_DATABASE_URL": database_url,
            "BIKEGUARD_MQTT_URL": mqtt_url,
            "BIKEGUARD_MQTT_SHARED_GROUP": shared,
            "BIKEGUARD_HTTP_PORT": str(args.port),
            "BIKEGUARD_MQTT_CLIENT_ID": "bikeguard-demo-backend",
            # A young town has little history: learn where bikes go next every minute, not every hour.
            "BIKEGUARD_MAINTENANCE_INTERVAL_S": "60",
            # Plain HTTP on this machine, data thrown away: development mode, asked for; random keys all the same.
            "BIKEGUARD_ENVIRONMENT": "development",
            # The counter's programming cable, on which the demo lays each v2 chip it fits (DemoCable).
            "BIKEGUARD_COUNTER_PROGRAMMER_URL": str(workdir / "ttyBGCABLE"),
            **random_secrets(),
        }
        with stop_signals.held():
            backend = subprocess.Popen(
                [sys.executable, "-m", "bikeguard.cli", "backend"], env=env, start_new_session=True
            )
        wait_for_http(f"{base}/api/health", process=backend)
        _say("backend up")

        town = Town.generate(args.seed, stations=args.stations, bikes=args.bikes)
        cable = DemoCable(workdir)
        staff = seed_backend(
            base, town, bootstrap_admin(database_url), v2_bikes=v2_bikes(town, args.v2_share), cable=cable
        )
        _say(
            f"town registered: {len(town.stations)} stations, {len(town.bikes)} bikes and their owners,"
            f" {len(town.roads)} roads"
        )
        v2_options = _v2_chips(workdir, cable.fitted)
        vendor_ids = vendor_device_ids(town, vendor_count)
        with sign_in(base, staff.installer) as installer:
            register_vendor_devices(installer, vendor_ids)
        station_urls = {s.station_id: mqtt_url for s in town.stations}  # a broker of the operator's: as given
        if broker is not None:
            with sign_in(base, staff.installer) as installer:
                issued = issue_station_credentials(installer, list(station_urls))
            install_station_credentials(broker, database_url, backend_mqtt_password, issued)
            station_urls = {sid: broker.url_as(sid, password) for sid, password in issued.items()}
            _say(f"MQTT passwords issued for {len(issued)} stations by the installer; the broker's files regenerated")

        # Every station, ours on a pty or a vendor's through the bridge, reports this often and takes only hot lists
        # signed with this run's key, as a provisioned station does.
        station_overrides: dict[str, Any] = {
            "status_interval_s": 10,
            "hotlist_public_key": public_key_of(env["BIKEGUARD_HOTLIST_SIGNING_KEY"]),
        }
        with stop_signals.held():
            fleet = GatewayFleet()
            fleet.start()
        vendor_options = _start_vendor_stations(fleet, workdir, vendor_ids, station_urls, station_overrides)
        with stop_signals.held():
            sim = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "firmware_sim",
                    "--seed",
                    str(args.seed),
                    "--stations",
                    str(args.stations),
                    "--bikes",
                    str(args.bikes),
                    "--steal-after",
                    str(args.steal_after),
                    *vendor_options,
                    *v2_options,
                    *("--steal-kind", args.steal_kind),
                    *(("--clone-after", str(args.clone_after)) if args.clone_after is not None and v2_options else ()),
                ],
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        events = _lines(sim)
        _start_gateways(
            fleet,
            next(e for e in events if e.get("event") == "ports"),
            vendor_ids,
            workdir,
            station_urls,
            station_overrides,
        )
        _say(f"open {base}/  — the live map (one bike will be stolen in about {args.steal_after:.0f} s)")
        _say(f"  sign in as police: username {staff.police.username}  password {staff.police.password}")
        _say(f"  the counter: {base}/counter  username {staff.clerk.username}  password {staff.clerk.password}")

        started = time.monotonic()
        theft_thread = threading.Thread(target=_report_thefts, args=(events, base, staff), daemon=True)
        theft_thread.start()
        while args.duration is None or time.monotonic() - started < args.duration:
            if sim.poll() is not None or backend.poll() is not None:
                _say("a part of the demo stopped unexpectedly; shutting down")
                return 1
            time.sleep(0.5)
        return 0
    except Stopped:
        return 0
    except ServiceError as exc:
        _say(f"could not start: {exc}")
        return 1
    finally:
        stop_signals.stopping = True  # however we got here, a signal now must not cut the clean-up short
        _say("stopping")
        if fleet:
            fleet.stop()
        # Side by side: each may take up to its timeout (the backend's ingest waits for its broker connections).
        stop_processes([p for p in (sim, backend) if p is not None])  # type: ignore[misc]  # text and bytes alike
        if broker:
            broker.stop()
        if pg:
            pg.stop()
        _say("stopped; nothing left running")


def _v2_chips(workdir: Path, fitted: list[ChipMemory]) -> list[str]:
    """Hand the chips fitted at the counter to the town's process (a file only this user reads); its options."""
    if not fitted:
        return []
    path = workdir / "v2-chips.json"
    write_chips(path, fitted)
    _say(
        f"{len(fitted)} bikes fitted with v2 chips through the counter's programming cable: they beacon rotating ids"
        " that only the backend resolves (the stations aggregate them by ephemeral id, knowing no key)"
    )
    return ["--v2-chips", str(path)]


def _start_vendor_stations(
    fleet: GatewayFleet,
    workdir: Path,
    vendor_ids: Mapping[str, str],
    station_urls: Mapping[str, str],
    station_overrides: Mapping[str, Any],
) -> list[str]:
    """Start the bridge for the vendor stations, if any; the simulator's options that make them connect to it."""
    if not vendor_ids:
        return []
    listen, devices_file = start_vendor_bridge(fleet, workdir, vendor_ids, station_urls, station_overrides)
    listed = ", ".join(f"{sid} (device {device_id})" for sid, device_id in vendor_ids.items())
    _say(f"vendor bridge (MR7901) listening on {listen} for {len(vendor_ids)} vendor stations: {listed}")
    _say(f"  its devices file: {devices_file}")
    return [
        *("--vendor-server", listen),
        *("--vendor-stations", str(len(vendor_ids))),
        *("--vendor-time-zone", VENDOR_TIME_ZONE),
    ]


def _start_gateways(
    fleet: GatewayFleet,
    started_sim: Mapping[str, Any],
    vendor_ids: Mapping[str, str],
    workdir: Path,
    station_urls: Mapping[str, str],
    station_overrides: Mapping[str, Any],
) -> None:
    """A gateway for each station the simulator put on a pty, once it says it runs the vendor stations expected."""
    if started_sim.get("vendor_stations", {}) != vendor_ids:
        raise ServiceError(
            f"the simulator runs vendor stations {started_sim.get('vendor_stations')}; the bridge expects {vendor_ids}"
        )
    ports: dict[str, str] = started_sim["ports"]
    gateways = [
        GatewaySettings(
            station_id=sid,
            serial_url=path,
            mqtt_url=SecretStr(station_urls[sid]),
            spool_path=workdir / f"gateway-{sid}.spool",
            **station_overrides,
        )
        for sid, path in ports.items()
    ]
    fleet.add(run_fleet(gateways))
    vendors = f"; {len(vendor_ids)} vendor stations through the bridge" if vendor_ids else ""
    _say(f"{len(ports)} radio modules on ptys, one gateway each{vendors}")


def _report_thefts(events: Iterator[dict[str, Any]], base: str, staff: DemoAccounts) -> None:
    """The owner notices the theft, signs in to the portal and reports it: the chip goes on the hot list."""
    for event in events:
        if event.get("event") == "clone":
            _say(
                f"a clone attacker who followed bike {event['plate']} (v2 chip {event['tag_id']}) plays its beacon back"
                f" at {event['station_id']} (recorded at {event['captured_at']}): watch for 'chip cloned'"
            )
            continue
        if event.get("event") != "theft":
            continue
        time.sleep(3)  # the owner takes a moment to notice
        try:
            r = report_theft_as_owner(base, staff, event["plate"], event["at"])
            _say(f"bike {event['plate']} (chip {event['tag_id']}) reported stolen by its owner: HTTP {r.status_code}")
        except (httpx.HTTPError, ServiceError, KeyError) as exc:
            _say(f"the owner of {event['plate']} could not report the theft: {exc}")


def report_theft_as_owner(base: str, staff: DemoAccounts, plate: str, stolen_at: str | None = None) -> httpx.Response:
    """The owner's first sign-in with the slip's password, a password of their own, then the theft report."""
    bike_id, first = staff.owners[plate]
    with sign_in(base, first) as owner:
        mine = Login(first.username, _password())
        owner.post(
            "/api/auth/password", json={"current_password": first.password, "new_password": mine.password}
        ).raise_for_status()
        staff.owners[plate] = (bike_id, mine)
        body = {"place": "where it was parked", "circumstances": "lock cut (simulated)"}
        if stolen_at:
            body["stolen_at"] = stolen_at
        return owner.post(f"/api/bikes/{bike_id}/theft", json=body)
