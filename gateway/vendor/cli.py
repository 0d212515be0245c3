"""`bikeguard gateway vendor`: the bridge for vendor (MR7901) stations, arguments over BIKEGUARD_VENDOR_* variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from gateway.vendor.bridge import Bridge, BridgeSettings
from gateway.vendor.devices import DevicesFileError, load_devices
from protocol import heap

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def vendor_parser() -> argparse.ArgumentParser:
    """The parser of `bikeguard gateway vendor`."""
    parser = argparse.ArgumentParser(
        prog="bikeguard gateway vendor",
        description="Bridge for vendor base stations speaking MR7901: they connect here over TCP, and each one "
        "registered in the devices file feeds its Bikeguard station (spool, hot list, MQTT) like our own gateway. "
        "Arguments override BIKEGUARD_VENDOR_* variables; the stations' other settings are BIKEGUARD_GATEWAY_* "
        "ones (hot-list public key, intervals).",
    )
    parser.add_argument("--listen", help="HOST:PORT the vendor stations are pointed at, e.g. 0.0.0.0:7901")
    parser.add_argument("--devices", dest="devices_file", type=Path, help="the devices file (TOML, [[device]])")
    parser.add_argument("--spool-dir", dest="spool_dir", type=Path, help="where the stations' spools go (.)")
    parser.add_argument("--heartbeat-timeout", dest="heartbeat_timeout_s", type=float, help="seconds (90)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def vendor_main(argv: Sequence[str]) -> int:
    """`bikeguard gateway vendor`: run the bridge until SIGTERM/SIGINT; 2 on bad settings or devices file."""
    parser = vendor_parser()
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=args.pop("log_level").upper(), format=_LOG_FORMAT)
    try:
        settings = BridgeSettings(**{k: v for k, v in args.items() if v is not None})
        devices = load_devices(settings.devices_file)
    except ValidationError as exc:
        parser.error(f"invalid settings:\n{exc}")
    except (ValueError, DevicesFileError) as exc:
        parser.error(str(exc))
    asyncio.run(Bridge(settings, devices, settle_heap_s=heap.SETTLE_AFTER_S).run())
    return 0
