"""The programming cable used at fitting (hardware/programming-cable.md), the counter's side and the framing both
ends share: a key goes into a v2 chip, never out.

`Programmer` opens the cable's serial port with pyserial (`/dev/ttyUSB0`, or the simulated chip's pty in
firmware_sim.programmer), writes the key and the time, and reads back only the key's check value, which it compares
with its own.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType

import serial

from protocol.beacon_v2 import KEY_BYTES, ChipKey
from protocol.frames import BadLengthError, CrcError, StreamDecoder, crc16

CABLE_SYNC = b"\x5a\xa5"
CABLE_BAUD_RATE = 115200
CABLE_MAX_LEN = 32
FIRMWARE = 0x0200
INFO_STRUCT = struct.Struct(">IBH")  # serial, state, firmware
WRITE_KEY_STRUCT = struct.Struct(">16sI")  # key, unix time that sets the chip's clock


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
            serial_number, state, firmware = INFO_STRUCT.unpack(reply.data)
        except struct.error as exc:
            raise ProgrammerError(f"INFO reply of {len(reply.data)} bytes") from exc
        return ChipInfo(serial_number, bool(state), firmware)

    def write_key(self, key: bytes, unix_s: float) -> bytes:
        """Write `key` and set the chip's clock to `unix_s`; return the key check value the chip reports, after
        checking it is the key's."""
        if len(key) != KEY_BYTES:
            raise ProgrammerError(f"a chip key is {KEY_BYTES} bytes, not {len(key)}")
        reply = self.request(Command.WRITE_KEY, WRITE_KEY_STRUCT.pack(key, int(unix_s)))
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
    "ChipRefusedError",
    "Command",
    "ErrorCode",
    "KeyCheckMismatchError",
    "NoReplyError",
    "Programmer",
    "ProgrammerError",
    "encode_cable",
]
