"""Self-test steps 1-4, the radio side: the serial port opens, the module answers, its noise floor, a test tag.

The steps observe the station's own `Radio` (gateway/radio.py), built from the same settings, port and decoder.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import serial

from gateway.radio import Radio, RadioError
from gateway.selftest.report import StepResult, format_duration
from gateway.selftest.settings import SelfTestSettings
from gateway.settings import GatewaySettings
from protocol.frames import Beacon, ModuleStatus
from protocol.messages import format_tag, parse_tag

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Heard:
    """What the self-test heard on the station's radio: module statuses and beacons by tag, each with its time."""

    def __init__(self, radio: Radio, running: asyncio.Task[None]) -> None:
        self.radio = radio
        self.statuses: list[tuple[datetime, ModuleStatus]] = []
        self.beacons: dict[int, list[tuple[datetime, Beacon]]] = {}
        self._running = running

    @property
    def beacons_total(self) -> int:
        """Beacons decoded so far, all tags."""
        return sum(len(b) for b in self.beacons.values())

    @property
    def error(self) -> OSError | None:
        """Why the open port failed (the device went away), if it did."""
        return self.radio.port_error

    async def wait_for(self, found: Callable[[], _T | None], timeout_s: float) -> _T | None:
        """Wait until found() returns something (returned), the port fails or timeout_s pass (None)."""

        def settled() -> bool | None:
            self._take()
            return True if found() is not None or self.error is not None else None

        await self.radio.wait_for(settled, timeout_s)
        return found()

    async def stop(self) -> None:
        """Stop the radio (its thread closes the port)."""
        await _stop(self._running)

    def _take(self) -> None:
        for reception in self.radio.take():
            frame = reception.frame
            if isinstance(frame, ModuleStatus):
                self.statuses.append((reception.received_at, frame))
            elif isinstance(frame, Beacon):
                self.beacons.setdefault(frame.tag_id, []).append((reception.received_at, frame))


async def _stop(running: asyncio.Task[None]) -> None:
    running.cancel()
    await asyncio.wait({running})  # not `await running`: a cancellation of our own must go on
    if not running.cancelled() and isinstance(running.exception(), RadioError):
        log.warning("%s", running.exception())


def _firmware(version: int) -> str:
    return f"{version >> 8}.{version & 0xFF}"


def _rejected_text(rejected: Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in rejected.most_common()) or "none"


def _device_list_hint(url: str) -> str:
    for prefix in ("/dev/ttyUSB", "/dev/ttyACM"):
        if url.startswith(prefix):
            return f"`ls -l {prefix}*`"
    return "`ls -l /dev/ttyUSB* /dev/ttyACM*`"


def _device_group(path: str) -> str:
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "dialout"


class RadioSide:
    """The radio-side steps for one station; `module_status` is what step 2 read."""

    def __init__(
        self,
        settings: GatewaySettings,
        options: SelfTestSettings,
        *,
        clock: Callable[[], datetime],
        open_serial: Callable[..., serial.SerialBase],
        prompt: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.options = options
        self.clock = clock
        self.open_serial = open_serial
        self.prompt = prompt
        self.module_status: ModuleStatus | None = None

    # 1. serial port

    async def open_port(self) -> tuple[StepResult, Heard | None]:
        """Step 1: the station's radio opens the port (exclusively, as the gateway does); on success it reads on."""
        url, baud = self.settings.serial_url, self.settings.baud_rate
        radio = Radio.of_station(self.settings, clock=self.clock, open_port=self.open_serial)
        running = asyncio.create_task(radio.run(), name=f"selftest radio {url}")
        await radio.wait_for(lambda: True if radio.opened or radio.open_error is not None else None, None)
        if not radio.opened:
            await _stop(running)
            exc = radio.open_error
            if isinstance(exc, ValueError):
                return StepResult(
                    "serial",
                    False,
                    f"invalid serial port settings: {exc}",
                    "check --serial (/dev/ttyUSB0, socket://host:port) and --baud (115200)",
                ), None
            assert exc is not None
            return self._open_failure(url, exc), None
        heard = Heard(radio, running)
        return StepResult("serial", True, f"{url} open at {baud} baud 8N1", data={"url": url, "baud": baud}), heard

    def _open_failure(self, url: str, exc: OSError) -> StepResult:
        code = exc.errno
        data = {"url": url, "errno": code, "error": str(exc)}
        if code == errno.ENOENT:
            return StepResult(
                "serial",
                False,
                f"no such device {url}",
                "is the radio module's USB cable plugged in (both ends)? "
                f"{_device_list_hint(url)} lists the serial devices, and `dmesg | tail` shows what the kernel "
                "saw when you plugged it in; then pass the right one with --serial",
                data,
            )
        if code in (errno.EACCES, errno.EPERM):
            group = _device_group(url)
            return StepResult(
                "serial",
                False,
                f"permission denied on {url}",
                f"the device belongs to group '{group}': add the gateway's user to it "
                f"(`sudo usermod -aG {group} $USER`), then log out and back in; `ls -l {url}` shows the owner",
                data,
            )
        if code in (errno.EBUSY, errno.EAGAIN):
            return StepResult(
                "serial",
                False,
                f"{url} is busy: another program has it open",
                "most likely the gateway itself is running: stop it for the self-test; "
                f"`fuser -v {url}` shows who holds the port (ModemManager likes to grab USB serial adapters: "
                "disable it)",
                data,
            )
        if code is None and "://" in url:
            return StepResult(
                "serial",
                False,
                f"cannot open {url}: {exc}",
                "check that the serial server at that address runs and is reachable",
                data,
            )
        return StepResult(
            "serial",
            False,
            f"cannot open {url}: {exc}",
            "unplug and re-plug the radio module's USB cable, then look at `dmesg | tail` for errors",
            data,
        )

    # 2. radio module

    async def module(self, heard: Heard) -> StepResult:
        """Step 2: bytes arrive and decode to a module status frame."""
        url, baud, timeout_s = self.settings.serial_url, self.settings.baud_rate, self.options.module_timeout_s
        started = self.clock()
        first = await heard.wait_for(lambda: heard.statuses[0] if heard.statuses else None, timeout_s)
        decoder = heard.radio.decoder
        rejected = decoder.rejected
        data: dict[str, Any] = {
            "bytes": heard.radio.bytes_total,
            "frames": decoder.frames,
            "rejected": dict(rejected),
            "rejected_samples": [e.raw.hex(" ") for e in list(decoder.recent_errors)[-3:]],
        }
        if first is None and heard.error is not None:
            return StepResult(
                "module",
                False,
                f"{url} failed while reading: {heard.error}",
                "the device went away: check the USB cable and its connector; `dmesg | tail`",
                data,
            )
        if first is None:
            if heard.radio.bytes_total == 0:
                return StepResult(
                    "module",
                    False,
                    f"no bytes at all on {url} at {baud} baud in {timeout_s:g} s",
                    "check the radio module's power LED and the USB cable; "
                    f"{_device_list_hint(url)} (is {url} really the radio module?)",
                    data,
                )
            if decoder.frames == 0:
                return StepResult(
                    "module",
                    False,
                    f"{heard.radio.bytes_total} bytes but no valid frame in {timeout_s:g} s "
                    f"(rejected: {_rejected_text(rejected)})",
                    f"wrong baud rate or wiring: the module talks 115200 baud 8N1 (this test used {baud}); "
                    "check --baud, that TX goes to RX and RX to TX with a common GND, and that no console or "
                    "other device shares the line",
                    data,
                )
            return StepResult(
                "module",
                False,
                f"{heard.beacons_total} beacons but no module status frame in {timeout_s:g} s",
                "the module must send a status frame every 10 s (hardware/reader-protocol.md): power-cycle it; "
                "if it still sends none, update its firmware",
                data,
            )
        received_at, status = first
        self.module_status = status
        waited_s = max((received_at - started).total_seconds(), 0.0)
        data.update(firmware=_firmware(status.firmware), uptime_s=status.uptime_s, waited_s=round(waited_s, 3))
        value = (
            f"firmware {_firmware(status.firmware)}, up {format_duration(status.uptime_s)} "
            f"(first status after {waited_s:.1f} s; {decoder.frames} frames, rejected: {_rejected_text(rejected)})"
        )
        advice = ""
        corrupt = rejected["crc"] + rejected["bad_length"]
        if corrupt > self.options.corrupt_frames_max:
            advice = (
                f"{corrupt} corrupted frames: a loose serial connector, a long unshielded cable or "
                "interference on the serial line"
            )
        return StepResult("module", True, value, advice, data)

    # 3. noise floor

    async def noise(self, heard: Heard) -> StepResult:
        """Step 3: the noise floor the module reports (the worst of its statuses so far)."""
        noise = max(status.noise_floor_dbm for _, status in heard.statuses)
        limit = self.options.noise_max_dbm
        data = {"noise_floor_dbm": noise, "limit_dbm": limit}
        if noise > limit:
            return StepResult(
                "noise",
                False,
                f"{noise} dBm, above the {limit} dBm limit",
                "interference: move the antenna away from other transmitters and switching electronics on the "
                "pole (the LTE router and its antenna, LED street-light drivers, the traffic-signal controller, "
                "power supplies), keep its coax away from mains cables, check that connectors are tight and the "
                "cable shield is grounded; then run the self-test again",
                data,
            )
        return StepResult("noise", True, f"{noise} dBm (limit {limit} dBm)", data=data)

    # 4. test tag

    async def test_tag(self, heard: Heard) -> StepResult:
        """Step 4: the installer holds the test tag (or any tag) near the antenna; it is heard, strongly enough."""
        tag, timeout_s = self.options.test_tag, self.options.tag_timeout_s
        wanted = parse_tag(tag) if tag else None
        self.prompt(
            f"hold {f'test tag {tag}' if tag else 'a test tag'} at arm's length from the antenna "
            f"(waiting up to {timeout_s:g} s)"
        )
        started = self.clock()

        def test_tag_beacons() -> list[tuple[datetime, Beacon]] | None:
            if wanted is not None:
                return heard.beacons.get(wanted)
            return next(iter(heard.beacons.values()), None)

        beacons = await heard.wait_for(test_tag_beacons, timeout_s)
        others = sorted(format_tag(t) for t in heard.beacons if t != wanted)
        if not beacons:
            value = f"test tag {tag} not heard in {timeout_s:g} s" if tag else f"no tag heard in {timeout_s:g} s"
            if heard.error is not None:
                value += f" ({self.settings.serial_url} failed: {heard.error})"
            if others:
                value += f" (heard {len(others)} other tag{'s' if len(others) != 1 else ''}: {', '.join(others[:5])})"
                advice = (
                    "the radio hears tags, just not this one: check the id printed on the test tag and "
                    "its battery; a tag beacons every 1-3 s"
                )
            else:
                advice = (
                    "hold the tag at arm's length in front of the antenna; check both antenna cables are "
                    "screwed onto the module's antenna ports; try another test tag (a flat battery stops it)"
                )
            return StepResult("test_tag", False, value, advice, {"test_tag": tag, "other_tags": others})
        best = max((b for _, b in beacons), key=lambda b: b.rssi_dbm)
        waited_s = max((beacons[0][0] - started).total_seconds(), 0.0)
        data = {
            "tag_id": format_tag(best.tag_id),
            "rssi_dbm": best.rssi_dbm,
            "antenna": best.antenna,
            "antennas": sorted({b.antenna for _, b in beacons}),
            "beacons": len(beacons),
            "waited_s": round(waited_s, 3),
            "other_tags": others,
        }
        value = (
            f"{format_tag(best.tag_id)} at {best.rssi_dbm} dBm on antenna {best.antenna} "
            f"after {waited_s:.1f} s ({len(beacons)} beacon{'s' if len(beacons) != 1 else ''})"
        )
        advice = ""
        if best.rssi_dbm < self.options.tag_rssi_min_dbm:
            advice = (
                f"weak signal: {best.rssi_dbm} dBm at arm's length is below {self.options.tag_rssi_min_dbm} "
                f"dBm, which means a bad antenna connection: check the coax connector on antenna port "
                f"{best.antenna}, the cable for kinks or water, and the surge arrester"
            )
        return StepResult("test_tag", True, value, advice, data)
