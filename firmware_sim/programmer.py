"""The programming cable used at fitting (hardware/programming-cable.md): a key goes into a v2 chip, never out.

`ChipOnCable` is the chip's side: a pty pair whose master it serves from a thread, as a chip's serial pins would.
`Programmer` is the counter's side: it opens the pty's slave with pyserial exactly as it would open `/dev/ttyUSB0`,
writes the key and the time, and reads back only the key's check value, which it compares with its own.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
import threading
import time
import tty
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType

import serial

from firmware_sim.tag_v2 import TagV2
from protocol.beacon_v2 import KEY_BYTES, ChipKey, key_check_value
from protocol.frames import BadLengthError, CrcError, StreamDecoder, crc16

CABLE_SYNC = b"\x5a\xa5"
CABLE_BAUD_RATE = 115200
CABLE_MAX_LEN = 32
FIRMWARE = 0x0200
_INFO = struct.Struct(">IBH")  # serial, state, firmware
_WRITE_KEY = struct.Struct(">16sI")  # key, unix time that sets the chip's clock


class Command(IntEnum):
    """What the cable carries; a reply's command is the request's with the top bit set, or ERROR."""

    INFO = 0x01
    WRITE_KEY = 0x02
    KEY_CHECK = 0x03
    ERROR = 0xFF


class ErrorCode(IntEnum):
    """Why a chip refused a request (the one data byte of an ERROR reply)."""

    BAD_FRAME = 0x01
    UNKNOWN_COMMAND = 0x02
    BAD_LENGTH = 0x03
    ALREADY_KEYED = 0x04
    NO_KEY = 0x05


class ProgrammerError(Exception):
    """Base error of the programming cable."""


class ChipRefusedError(ProgrammerError):
    """The chip answered with an ERROR reply; carries its code."""

    def __init__(self, code: int) -> None:
        name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else f"0x{code:02x}"
        super().__init__(f"the chip refused: {name}")
        self.code = code


class KeyCheckMismatchError(ProgrammerError):
    """The chip's key check value is not the written key's: the key did not arrive intact."""


class NoReplyError(ProgrammerError):
    """No reply from the chip in time (no chip on the cable, or a broken line)."""


@dataclass(frozen=True, slots=True)
class CableFrame:
    """One frame on the cable, either way."""

    command: int
    data: bytes


def encode_cable(frame: CableFrame) -> bytes:
    """The bytes of one cable frame: 5A A5, CMD, LEN, DATA, CRC-16/CCITT-FALSE over CMD, LEN and DATA."""
    if len(frame.data) > CABLE_MAX_LEN:
        raise ValueError(f"cable frame data is {len(frame.data)} bytes, at most {CABLE_MAX_LEN}")
    head = bytes([frame.command, len(frame.data)]) + frame.data
    return CABLE_SYNC + head + crc16(head).to_bytes(2, "big")


class CableDecoder(StreamDecoder):
    """Streaming decoder of cable frames with the reader protocol's resync and reject-with-reasons behaviour."""

    def feed(self, data: bytes) -> list[CableFrame]:
        """Add bytes from the line; return the frames they complete. Never raises."""
        buf = self._buf
        buf += data
        out: list[CableFrame] = []
        while self._at_sync(CABLE_SYNC) and len(buf) >= 4:
            length = buf[3]
            if length > CABLE_MAX_LEN:
                self._reject(BadLengthError(f"length byte {length} above {CABLE_MAX_LEN}", bytes(buf[:4])))
                self._resync()
                continue
            total = 2 + 2 + length + 2
            if len(buf) < total:
                break
            raw = bytes(buf[:total])
            if crc16(raw[2:-2]) != int.from_bytes(raw[-2:], "big"):
                self._reject(CrcError("CRC mismatch", raw))
                self._resync()
                continue
            del buf[:total]
            self._resyncing = False
            out.append(CableFrame(raw[2], raw[4:-2]))
            self.frames += 1
        return out


class ChipOnCable:
    """A blank v2 chip on the programming cable: answers INFO, takes one key (WRITE_KEY), tells its KEY_CHECK.

    No command reads the key back; the key is written once (a refit is a new chip, and the old key is retired).
    """

    def __init__(self, serial_number: int) -> None:
        self.serial_number = serial_number
        self._key: bytes | None = None
        self.clock_set_unix_s: float | None = None
        self.refused: list[ErrorCode] = []
        self._decoder = CableDecoder()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"chip {serial_number}", daemon=True)
        self._thread.start()

    def __enter__(self) -> ChipOnCable:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChipOnCable(serial={self.serial_number}, keyed={self.keyed})"

    @property
    def keyed(self) -> bool:
        """Whether a key was written."""
        return self._key is not None

    def tag(self, rng: random.Random, *, clock_offset_s: float = 0.0, drift_ppm: float = 0.0) -> TagV2:
        """The chip off the cable and beaconing: a TagV2 with the written key, its clock set when it was written
        (simulation time 0 is that moment)."""
        if self._key is None or self.clock_set_unix_s is None:
            raise ProgrammerError(f"chip {self.serial_number} has no key: it cannot beacon v2")
        return TagV2(
            self.serial_number,
            self._key,
            rng,
            epoch_unix_s=self.clock_set_unix_s,
            clock_offset_s=clock_offset_s,
            drift_ppm=drift_ppm,
        )

    def _serve(self) -> None:
        while not self._stop.wait(0.002):
            try:
                data = os.read(self._master, 256)
            except BlockingIOError:
                continue
            except OSError:
                return
            broken = self._broken_frames()
            for frame in self._decoder.feed(data):
                self._send(self._answer(frame))
            if self._broken_frames() > broken:
                # A host waiting for a reply to a frame garbled on the way learns so at once instead of timing out.
                self._send(self._error(ErrorCode.BAD_FRAME))

    def _broken_frames(self) -> int:
        return self._decoder.rejected["crc"] + self._decoder.rejected["bad_length"]

    def _send(self, frame: CableFrame) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, encode_cable(frame))

    def _error(self, code: ErrorCode) -> CableFrame:
        self.refused.append(code)
        return CableFrame(Command.ERROR, bytes([code]))

    def _answer(self, frame: CableFrame) -> CableFrame:
        reply = frame.command | 0x80
        if frame.command == Command.INFO:
            if frame.data:
                return self._error(ErrorCode.BAD_LENGTH)
            return CableFrame(reply, _INFO.pack(self.serial_number, int(self.keyed), FIRMWARE))
        if frame.command == Command.WRITE_KEY:
            if len(frame.data) != _WRITE_KEY.size:
                return self._error(ErrorCode.BAD_LENGTH)
            if self._key is not None:
                return self._error(ErrorCode.ALREADY_KEYED)
            key, unix_s = _WRITE_KEY.unpack(frame.data)
            self._key, self.clock_set_unix_s = key, float(unix_s)
            return CableFrame(reply, key_check_value(key))
        if frame.command == Command.KEY_CHECK:
            if frame.data:
                return self._error(ErrorCode.BAD_LENGTH)
            if self._key is None:
                return self._error(ErrorCode.NO_KEY)
            return CableFrame(reply, key_check_value(self._key))
        return self._error(ErrorCode.UNKNOWN_COMMAND)

    def close(self) -> None:
        """Stop serving and close the pty."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass(frozen=True, slots=True)
class ChipInfo:
    """What a chip on the cable says about itself."""

    serial_number: int
    keyed: bool
    firmware: int


class Programmer:
    """The fitting counter's end of the cable; a context manager that closes the port."""

    def __init__(self, port: str, *, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._port = serial.serial_for_url(port, baudrate=CABLE_BAUD_RATE, timeout=0.02)
        self._decoder = CableDecoder()

    def __enter__(self) -> Programmer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def request(self, command: int, data: bytes = b"") -> CableFrame:
        """Send one request and wait for its reply; ChipRefusedError on an ERROR reply."""
        self._port.write(encode_cable(CableFrame(command, data)))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for frame in self._decoder.feed(self._port.read(64)):
                if frame.command == Command.ERROR:
                    raise ChipRefusedError(frame.data[0] if frame.data else 0)
                if frame.command == command | 0x80:
                    return frame
        raise NoReplyError(f"no reply to command 0x{command:02x} within {self.timeout_s} s")

    def info(self) -> ChipInfo:
        """The chip's serial number, whether it has a key, and its firmware."""
        reply = self.request(Command.INFO)
        try:
            serial_number, state, firmware = _INFO.unpack(reply.data)
        except struct.error as exc:
            raise ProgrammerError(f"INFO reply of {len(reply.data)} bytes") from exc
        return ChipInfo(serial_number, bool(state), firmware)

    def write_key(self, key: bytes, unix_s: float) -> bytes:
        """Write `key` and set the chip's clock to `unix_s`; return the key check value the chip reports, after
        checking it is the key's."""
        if len(key) != KEY_BYTES:
            raise ProgrammerError(f"a chip key is {KEY_BYTES} bytes, not {len(key)}")
        reply = self.request(Command.WRITE_KEY, _WRITE_KEY.pack(key, int(unix_s)))
        if reply.data != ChipKey(key).check_value:
            raise KeyCheckMismatchError(f"the chip reports key check value {reply.data.hex()}, not the written key's")
        return reply.data

    def key_check(self) -> bytes:
        """The key check value of the key the chip holds (never the key)."""
        return self.request(Command.KEY_CHECK).data

    def close(self) -> None:
        """Close the port."""
        self._port.close()


__all__ = [
    "CABLE_SYNC",
    "CableDecoder",
    "CableFrame",
    "ChipInfo",
    "ChipOnCable",
    "ChipRefusedError",
    "Command",
    "ErrorCode",
    "KeyCheckMismatchError",
    "NoReplyError",
    "Programmer",
    "ProgrammerError",
    "encode_cable",
]
