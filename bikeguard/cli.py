"""The `bikeguard` command: demo, backend, notify, gateway, sim, map, db migrate, account create, broker files,
station credentials."""

from __future__ import annotations

import argparse
import logging
import sys


def _backend(args: argparse.Namespace) -> int:
    import uvicorn

    from backend.api.app import create_app, server_config
    from backend.api.middleware.limits import server_options
    from backend.settings import BackendSettings
    from protocol import heap

    settings = BackendSettings()  # type: ignore[call-arg]  # database_url comes from the environment
    app = create_app(settings, run_ingest=not args.no_ingest, settle_heap_s=heap.SETTLE_AFTER_S)
    uvicorn.Server(server_config(app, settings.http_host, settings.http_port, **server_options(settings))).run()
    return 0


def _notify(_args: argparse.Namespace) -> int:
    import asyncio

    from backend.notifications.worker import Sender
    from backend.settings import BackendSettings

    settings = BackendSettings()  # type: ignore[call-arg]  # database_url comes from the environment
    asyncio.run(Sender(settings).run())
    return 0


def _migrate(_args: argparse.Namespace) -> int:
    from backend.db.migrate import DatabaseRoleError, migrate_as_owner
    from backend.db.storage import StorageEngineError
    from backend.settings import BackendSettings

    settings = BackendSettings()  # type: ignore[call-arg]  # database_url comes from the environment
    try:
        applied = migrate_as_owner(settings)
    except (DatabaseRoleError, StorageEngineError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"applied {len(applied)} migrations: {', '.join(applied) or 'none needed'}")
    return 0


def _account(args: argparse.Namespace) -> int:
    import getpass
    import os

    from backend.accounts import AccountError, bootstrap
    from backend.settings import BackendSettings

    password = os.environ.get("BIKEGUARD_NEW_PASSWORD") or getpass.getpass(f"password for {args.username}: ")
    try:
        bootstrap(
            BackendSettings(),  # type: ignore[call-arg]  # database_url comes from the environment
            args.username,
            password,
            args.role,
            args.display_name,
            must_change_password=args.must_change_password,
        )
    except AccountError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"{args.role} account {args.username!r} created")
    return 0


def _share(text: str) -> float:
    """A share between 0 and 1, for argparse."""
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"a share is between 0 and 1, not {share}")
    return share


def _demo(args: argparse.Namespace) -> int:
    from bikeguard.demo import run_demo

    return run_demo(args)


def _gateway(argv: list[str]) -> int:
    from gateway.cli import main

    return main(argv) or 0


def _sim(argv: list[str]) -> int:
    from firmware_sim.runner import main

    return main(argv) or 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bikeguard` console script."""
    argv = sys.argv[1:] if argv is None else argv
    # gateway and sim parse their own arguments.
    if argv[:1] == ["gateway"]:
        return _gateway(argv[1:])
    if argv[:1] == ["sim"]:
        return _sim(argv[1:])
    if argv[:1] == ["map"]:
        from bikeguard.map_command import main as map_main

        return map_main(argv[1:])
    if argv[:1] in (["broker"], ["station"]):
        from bikeguard.broker_command import main as broker_main

        return broker_main(argv)

    parser = argparse.ArgumentParser(prog="bikeguard", description="Bikeguard e-bike anti-theft tracking")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a simulated town end to end and open the live map")
    demo.add_argument("--stations", type=int, default=20)
    demo.add_argument("--bikes", type=int, default=200)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--steal-after", type=float, default=60.0, help="seconds until one bike is stolen")
    demo.add_argument(
        "--vendor-stations",
        type=int,
        metavar="N",
        help="run the N stations nearest the town's centre as MR7901 vendor stations through the vendor bridge "
        "(default 2; 0: none)",
    )
    demo.add_argument(
        "--v2-share",
        type=_share,
        default=0.1,
        help="share of the bikes fitted with v2 chips (rotating ids, keyed at the counter), 0 to 1",
    )
    from firmware_sim.runner import add_attack_options  # the simulator's options the demo passes on

    add_attack_options(demo)
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.set_defaults(func=_demo)
    backend = sub.add_parser("backend", help="run the backend (API, pages, ingest) from BIKEGUARD_* settings")
    backend.add_argument("--no-ingest", action="store_true", help="serve the API only")
    backend.set_defaults(func=_backend)
    sub.add_parser(
        "notify", help="run a sender of owners' notifications on its own (with BIKEGUARD_NOTIFY_IN_BACKEND=false)"
    ).set_defaults(func=_notify)
    sub.add_parser("gateway", help="run a station gateway (see bikeguard gateway --help)")
    sub.add_parser("sim", help="run a simulated town on ptys (see bikeguard sim --help)")
    sub.add_parser("map", help="write a standalone coverage or trajectory map (see bikeguard map --help)")
    sub.add_parser("broker", help="Mosquitto's passwd and acl from the stations table (see bikeguard broker --help)")
    sub.add_parser("station", help="issue a station's MQTT password (see bikeguard station --help)")
    db = sub.add_parser("db", help="database tasks")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser(
        "migrate", help="apply the schema migrations as the owner and grant the application role its privileges"
    ).set_defaults(func=_migrate)
    account = sub.add_parser("account", help="accounts made from the command line (the first admin)")
    account_sub = account.add_subparsers(dest="account_command", required=True)
    create = account_sub.add_parser(
        "create", help="create an account (password from BIKEGUARD_NEW_PASSWORD or asked for)"
    )
    create.add_argument("--username", required=True)
    create.add_argument("--role", default="admin", choices=("admin", "clerk", "police", "installer"))
    create.add_argument("--display-name", default=None)
    create.add_argument("--must-change-password", action="store_true", help="ask for a new password at first login")
    create.set_defaults(func=_account)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pydantic import ValidationError

    try:
        return int(args.func(args))
    except ValidationError as exc:
        print(backend_settings_problems(exc), file=sys.stderr)
        return 2


def backend_settings_problems(exc: Exception) -> str:
    """The backend's refused settings, one line each, named by their environment variable (not pydantic's dump)."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"  BIKEGUARD_{str(error['loc'][0]).upper()}: {message}" if error["loc"] else f"  {message}")
    return "refused settings (BIKEGUARD_* environment variables):\n" + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
