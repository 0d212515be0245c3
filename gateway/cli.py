"""`bikeguard gateway [selftest|rejected]`: the gateway's command line, arguments over BIKEGUARD_GATEWAY_* variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.rejected_runs import RejectedRun, parse_since, previous_path, read_runs
from gateway.selftest import Report, SelfTest, SelfTestSettings, StepResult
from gateway.selftest.report import format_prompt, format_step, format_summary
from gateway.settings import GatewaySettings, StationFilesSettings
from gateway.station import run_gateway
from gateway.vendor.cli import vendor_main
from protocol.messages import utcnow

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_station_arguments(parser: argparse.ArgumentParser, log_level: str = "INFO") -> None:
    """The flags that build GatewaySettings (shared by the gateway and its self-test)."""
    parser.add_argument("--station-id", dest="station_id")
    parser.add_argument("--serial", dest="serial_url", help="/dev/ttyUSB0, a pty path or socket://host:port")
    parser.add_argument("--mqtt", dest="mqtt_url", help="mqtt://user:pass@host:port")
    parser.add_argument("--spool", dest="spool_path", type=Path, help="SQLite spool file")
    parser.add_argument("--baud", dest="baud_rate", type=int)
    parser.add_argument("--gps", dest="gps_url", help="a mobile reader's GPS receiver (NMEA 0183): /dev/ttyACM0 …")
    parser.add_argument("--firmware")
    parser.add_argument("--log-level", default=log_level)


def settings_problems(exc: ValidationError) -> str:
    """One line per refused setting, named as the environment variable that sets it."""
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "settings"
        lines.append(f"  BIKEGUARD_GATEWAY_{name.upper()} (or its option): {error['msg']}")
    return "invalid settings:\n" + "\n".join(lines)


def build_settings(parser: argparse.ArgumentParser, args: dict[str, Any]) -> GatewaySettings:
    """GatewaySettings from the environment, overridden by the arguments given; a usage error if invalid."""
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        return GatewaySettings(**overrides)
    except ValidationError as exc:
        parser.error(settings_problems(exc))


def gateway_parser() -> argparse.ArgumentParser:
    """The parser of `bikeguard gateway`."""
    parser = argparse.ArgumentParser(
        prog="bikeguard gateway",
        description="Station gateway: serial frames in, MQTT out. Arguments override "
        "BIKEGUARD_GATEWAY_* environment variables.",
        epilog="`bikeguard gateway selftest --help`: the commissioning self-test; `bikeguard gateway rejected "
        "--help`: the byte runs the radio's decoder refused; `bikeguard gateway vendor --help`: the bridge for vendor "
        "(MR7901) stations (docs/installer.md).",
    )
    add_station_arguments(parser)
    return parser


def selftest_parser() -> argparse.ArgumentParser:
    """The parser of `bikeguard gateway selftest`."""
    parser = argparse.ArgumentParser(
        prog="bikeguard gateway selftest",
        description="Commissioning self-test of one station: serial port, radio module, noise floor, a test "
        "tag, clock, broker, heartbeat (and the backend with --backend). Exit code 0 when every step passes. "
        "Station flags override BIKEGUARD_GATEWAY_* variables, the others BIKEGUARD_SELFTEST_* ones.",
    )
    add_station_arguments(parser, log_level="WARNING")
    parser.add_argument("--test-tag", dest="test_tag", help="id of the test tag (8 hex digits); default: any tag")
    parser.add_argument("--tag-timeout", dest="tag_timeout_s", type=float, help="seconds to wait for it (30)")
    parser.add_argument(
        "--module-timeout",
        dest="module_timeout_s",
        type=float,
        help="seconds to wait for the module's status frame (12)",
    )
    parser.add_argument("--backend", dest="backend_url", help="http(s)://backend: also check it shows the station")
    parser.add_argument(
        "--token",
        dest="backend_token",
        help="installer's API token for --backend (better: BIKEGUARD_SELFTEST_BACKEND_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable report on stdout")
    return parser


async def run_selftest(settings: GatewaySettings, options: SelfTestSettings, *, as_json: bool = False) -> Report:
    """Run the self-test, printing each step as it completes (or, as_json, the report at the end)."""
    out = sys.stderr if as_json else sys.stdout
    done = 0

    def show(result: StepResult) -> None:
        nonlocal done
        done += 1
        if not as_json:
            print(format_step(result, done), flush=True)

    if not as_json:
        print(
            f"Bikeguard self-test of station {settings.station_id} ({settings.serial_url}, "
            f"broker {settings.mqtt_endpoint})",
            flush=True,
        )
    test = SelfTest(settings, options, prompt=lambda text: print(format_prompt(text), file=out, flush=True))
    report = await test.run(show)
    if as_json:
        sys.stdout.buffer.write(report.to_json() + b"\n")
        sys.stdout.flush()
    else:
        print(format_summary(report), flush=True)
    return report


def selftest_main(argv: Sequence[str]) -> int:
    """`bikeguard gateway selftest`: 0 when every step passes, 1 otherwise."""
    parser = selftest_parser()
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=args.pop("log_level").upper(), format=_LOG_FORMAT)
    as_json = bool(args.pop("json"))
    overrides = {k: args.pop(k) for k in list(args) if k in SelfTestSettings.model_fields}
    settings = build_settings(parser, args)
    try:
        options = SelfTestSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        parser.error(f"invalid self-test settings:\n{exc}")
    return asyncio.run(run_selftest(settings, options, as_json=as_json)).exit_code


def rejected_parser() -> argparse.ArgumentParser:
    """The parser of `bikeguard gateway rejected`."""
    parser = argparse.ArgumentParser(
        prog="bikeguard gateway rejected",
        description="Print the byte runs the station's radio decoder refused (bad CRC, garbage, unknown types), "
        "oldest first, from its rejected-runs file and the previous one. The file is found from the same "
        "BIKEGUARD_GATEWAY_* variables as the gateway's (station id, spool path, rejected-runs path); the flags "
        "override them.",
    )
    parser.add_argument("--station", dest="station_id", help="station id (BIKEGUARD_GATEWAY_STATION_ID)")
    parser.add_argument(
        "--spool", dest="spool_path", type=Path, help="the station's spool file; the runs are beside it"
    )
    parser.add_argument("--file", dest="rejected_runs_path", type=Path, help="the rejected-runs file itself")
    parser.add_argument("--since", help="only runs since an ISO 8601 time (UTC unless it says) or an age: 30m, 2h, 7d")
    parser.add_argument("--json", action="store_true", help="print the runs as JSON lines, as stored")
    return parser


def format_run(run: RejectedRun) -> str:
    """One run as an installer reads it: time, station, reason, length, bytes (hex) and what was wrong."""
    shown = bytes.fromhex(run.raw_hex).hex(" ")
    if run.truncated:
        shown += f" … (+{run.length - len(run.raw_hex) // 2} bytes)"
    at = run.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{at} UTC  {run.station_id}  {run.reason:<12} {run.length:>4} B  {shown}  ({run.detail})"


def rejected_main(argv: Sequence[str]) -> int:
    """`bikeguard gateway rejected`: print a station's kept rejected runs; 0 (even when there are none)."""
    parser = rejected_parser()
    args = vars(parser.parse_args(argv))
    as_json, since_text = bool(args.pop("json")), args.pop("since")
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        settings = StationFilesSettings(**overrides)
    except ValidationError as exc:
        parser.error(settings_problems(exc))
    try:
        since = None if since_text is None else parse_since(since_text, utcnow())
    except ValueError as exc:
        parser.error(str(exc))
    path = settings.rejected_runs_file
    reasons: Counter[str] = Counter()
    for run in read_runs(path, since=since, station_id=settings.station_id):
        reasons[run.reason] += 1
        if as_json:
            sys.stdout.buffer.write(run.to_json() + b"\n")
        else:
            print(format_run(run))
    sys.stdout.flush()
    if not as_json:
        counts = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
        where = f"{path} and {previous_path(path).name}"
        print(
            f"{reasons.total()} rejected run(s) of station {settings.station_id} in {where}"
            + (f": {counts}" if counts else "")
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`bikeguard gateway`: run one station from env and arguments (`… selftest`: its self-test; `… rejected`: its
    rejected runs; `… vendor`: the bridge for vendor stations)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["selftest"]:
        return selftest_main(argv[1:])
    if argv[:1] == ["rejected"]:
        return rejected_main(argv[1:])
    if argv[:1] == ["vendor"]:
        return vendor_main(argv[1:])
    parser = gateway_parser()
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=args.pop("log_level").upper(), format=_LOG_FORMAT)
    settings = build_settings(parser, args)
    asyncio.run(run_gateway(settings))
    return 0
