"""`bikeguard broker files`, `bikeguard station credentials` and `… signing-key`: Mosquitto's files, station
passwords and the hot-list key."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shutil
import sys
import tempfile
from pathlib import Path

import psycopg

from backend import provisioning
from backend.settings import BackendSettings
from backend.stations import StationNotFound
from protocol.signing import generate_signing_key, public_key_of

BACKEND_PASSWORD_ENV = "BIKEGUARD_BROKER_BACKEND_PASSWORD"
SIGNING_KEY_ENV = "BIKEGUARD_HOTLIST_SIGNING_KEY"
PUBLIC_KEY_ENV = "BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bikeguard", description="broker credentials (database from BIKEGUARD_*)")
    sub = parser.add_subparsers(dest="command", required=True)
    broker = sub.add_parser("broker", help="the MQTT broker's files")
    broker_sub = broker.add_subparsers(dest="broker_command", required=True)
    files = broker_sub.add_parser(
        "files",
        help=f"write Mosquitto's passwd and acl from the stations table (backend password from "
        f"{BACKEND_PASSWORD_ENV}, --backend-hash, or asked for)",
    )
    files.add_argument("--out", type=Path, required=True, help="folder for passwd and acl (mode 0600)")
    files.add_argument(
        "--backend-user", default="bikeguard-backend", help="the user in the backend's BIKEGUARD_MQTT_URL"
    )
    files.add_argument("--backend-hash", help="the backend's existing $7$ hash instead of its password")
    files.add_argument("--owner", help="give the files (and a folder it creates) to this user (mosquitto); root only")
    station = sub.add_parser("station", help="station tasks")
    station_sub = station.add_subparsers(dest="station_command", required=True)
    creds = station_sub.add_parser("credentials", help="issue (or rotate) a station's MQTT password, shown once")
    creds.add_argument("station_id")
    creds.add_argument(
        "--broker",
        default=provisioning.BROKER_PLACEHOLDER,
        help="HOST:PORT the station (or, for a vendor station, the bridge) connects to",
    )
    station_sub.add_parser(
        "signing-key",
        help="make a new hot-list signing key (BIKEGUARD_HOTLIST_SIGNING_KEY) and print it with its public half",
    )
    return parser


def _backend_hash(args: argparse.Namespace) -> str:
    if args.backend_hash:
        return str(args.backend_hash)
    password = os.environ.get(BACKEND_PASSWORD_ENV)
    if not password:
        password = getpass.getpass(f"MQTT password of {args.backend_user}: ")
        if password != getpass.getpass("again: "):
            raise ValueError("the two passwords differ")
    return provisioning.password_hash(password)


def _write_private(path: Path, text: str, owner: str | None) -> None:
    """Write a 0600 file in one step (a reloading broker never reads half of it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if owner:
            shutil.chown(tmp, owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _files(args: argparse.Namespace) -> int:
    settings = BackendSettings()  # type: ignore[call-arg]  # database_url comes from the environment

    async def generate(backend_hash: str) -> tuple[str, str]:
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            return await provisioning.broker_files(conn, args.backend_user, backend_hash)

    try:
        passwd, acl = asyncio.run(generate(_backend_hash(args)))
    except (ValueError, provisioning.ProvisioningError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    out: Path = args.out
    if not out.exists():
        out.mkdir(mode=0o700, parents=True)
        if args.owner:
            shutil.chown(out, args.owner)  # the broker must be able to enter it
    _write_private(out / "passwd", passwd, args.owner)
    _write_private(out / "acl", acl, args.owner)
    stations = passwd.count("\n") - 1
    print(f"wrote {out / 'passwd'} and {out / 'acl'}: {stations} stations and {args.backend_user}")
    print(
        f"mosquitto.conf needs: allow_anonymous false / password_file {(out / 'passwd').resolve()}"
        f" / acl_file {(out / 'acl').resolve()}"
    )
    print(
        "make Mosquitto read them (SIGHUP; clients no longer allowed are dropped): systemctl reload mosquitto,"
        " or kill -HUP <mosquitto pid>"
    )
    return 0


def _credentials(args: argparse.Namespace) -> int:
    settings = BackendSettings()  # type: ignore[call-arg]  # database_url comes from the environment
    try:
        actor = f"command line:{getpass.getuser()}"
    except OSError:  # no login name in a bare container
        actor = "command line"

    async def issue() -> provisioning.IssuedCredentials:
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            issued = await provisioning.issue_credentials(conn, args.station_id, actor)
            await conn.commit()
            return issued

    try:
        issued = asyncio.run(issue())
    except (StationNotFound, provisioning.ProvisioningError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(
        f"MQTT password for station {issued.station_id}, issued {issued.issued_at:%Y-%m-%d %H:%M:%S %Z}"
        " (shown only now; the database keeps its hash):"
    )
    print(f"  {issued.password}")
    entry = provisioning.bridge_device_entry(issued, args.broker)
    if entry is not None:
        # A vendor station holds no settings of ours: the bridge connects for it, with this block.
        print("a vendor station: add this block to the bridge's devices file (bikeguard gateway vendor --devices FILE)")
        print("in place of any earlier block of this device, and restart the bridge (it reads the file at start):")
        print(entry)
        print("the bridge itself, like a gateway, takes only hot lists signed with the backend's key:")
    else:
        print("on the station, set:")
        print(f"  BIKEGUARD_GATEWAY_STATION_ID={issued.station_id}")
        print(f"  BIKEGUARD_GATEWAY_MQTT_URL={issued.mqtt_url(args.broker)}")
    if os.environ.get(SIGNING_KEY_ENV):
        print(f"  {PUBLIC_KEY_ENV}={public_key_of(os.environ[SIGNING_KEY_ENV])}")
    else:
        print(
            f"  {PUBLIC_KEY_ENV}=<not shown: {SIGNING_KEY_ENV} is not set here; the station takes only hot lists"
            " signed with the backend's key>"
        )
    print(
        "then regenerate the broker's files (bikeguard broker files --out DIR) and reload Mosquitto;"
        " until then the previous password still works"
    )
    return 0


def _signing_key() -> int:
    key = generate_signing_key()
    print("a new hot-list signing key; the backend's setting (keep it secret):")
    print(f"  {SIGNING_KEY_ENV}={key}")
    print("and its public half, for every station (`bikeguard station credentials` prints it too):")
    print(f"  {PUBLIC_KEY_ENV}={public_key_of(key)}")
    return 0


def main(argv: list[str]) -> int:
    """`bikeguard broker files …` or `bikeguard station credentials …` (argv starts with broker or station)."""
    args = _parser().parse_args(argv)
    if args.command == "broker":
        return _files(args)
    if args.station_command == "signing-key":
        return _signing_key()
    return _credentials(args)
