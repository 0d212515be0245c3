"""Reader serial frames: the bytes our radio module writes on its serial port.

Layout (see hardware/reader-protocol.md):

    AA 55 | LEN | TYPE | PAYLOAD (LEN-1 bytes) | CRC16 (big-endian)

LEN counts TYPE and PAYLOAD. The CRC is CRC-16/CCITT-FALSE over LEN, TYPE and PAYLOAD.
"""

from __future__ import annotations

import binascii
import struct
from collections import Counter, deque
from dataclasses import dataclass
from enum import IntEnum, IntFlag

SYNC = b"\xaa\x55"
MAX_LEN = 64
BAUD_RATE = 115200


class FrameType(IntEnum):
    """The frame types a radio module sends."""

    BEACON = 0x01
    MODULE_STATUS = 0x02
    BEACON_V2 = 0x11  # a v2 (rotating id) beacon; 0x03 stays unknown, as old receivers were tested with it


class TagFlags(IntFlag):
    """Status bits a tag sends in every beacon."""

    LOW_BATTERY = 0x01
    TAMPER = 0x02
    MOTION = 0x04


_BEACON = struct.Struct(">IHBbB")  # tag_id, counter, flags, rssi_dbm, antenna
_STATUS = struct.Struct(">bHI")  # noise_floor_dbm, firmware, uptime_s
# The v2 air payload as heard (version, eid, sealed counter, flags, MAC; protocol.beacon_v2), then rssi_dbm, antenna.
BEACON_V2_FORMAT = ">B8s4sB4sbB"
_BEACON_V2 = struct.Struct(BEACON_V2_FORMAT)
BEACON_V2_VERSION = 0x02


@dataclass(frozen=True, slots=True)
class Beacon:
    """One tag transmission heard by the radio module."""

    tag_id: int
    counter: int
    flags: TagFlags
    rssi_dbm: int
    antenna: int


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    """The radio module's periodic report about itself."""

    noise_floor_dbm: int
    firmware: int
    uptime_s: int


@dataclass(frozen=True, slots=True)
class BeaconV2:
    """One v2 tag transmission heard by the radio module: opaque to the module, resolved by the backend.

    `flags` keeps every bit as sent (reserved ones too): they are under the MAC.
    """

    eid: bytes
    sealed_counter: bytes
    flags: TagFlags
    mac: bytes
    rssi_dbm: int
    antenna: int
    version: int = BEACON_V2_VERSION


Frame = Beacon | ModuleStatus | BeaconV2


class FrameError(Exception):
    """A run of bytes that is not a valid frame; carries the bytes and why."""

    reason = "frame"

    def __init__(self, message: str, raw: bytes) -> None:
        super().__init__(f"{message}: {raw.hex(' ')}")
        self.raw = raw


class GarbageError(FrameError):
    """Bytes before a sync pattern that belong to no frame."""

    reason = "garbage"


class BadLengthError(FrameError):
    """A length byte outside what any frame type allows."""

    reason = "bad_length"


class CrcError(FrameError):
    """A frame whose CRC does not match its bytes."""

    reason = "crc"


class UnknownTypeError(FrameError):
    """A frame with a valid CRC but a type this decoder does not know."""

    reason = "unknown_type"


class PayloadError(FrameError):
    """A frame of a known type whose payload has the wrong size."""

    reason = "bad_payload"


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no xor-out): binascii's CRC-CCITT in C, some
    thirty times faster than a table in Python (a vendor upload is hundreds of bytes)."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode(frame: Frame) -> bytes:
    """Encode one frame to the bytes the radio module writes; ValueError if a field is out of range."""
    try:
        return _encode(frame)
    except struct.error as exc:
        raise ValueError(f"{type(frame).__name__} field out of range: {exc}") from exc


def _encode(frame: Frame) -> bytes:
    if isinstance(frame, Beacon):
        body = bytes([FrameType.BEACON]) + _BEACON.pack(
            frame.tag_id, frame.counter, int(frame.flags), frame.rssi_dbm, frame.antenna
        )
    elif isinstance(frame, BeaconV2):
        body = bytes([FrameType.BEACON_V2]) + _pack_beacon_v2(frame)
    else:
        body = bytes([FrameType.MODULE_STATUS]) + _STATUS.pack(frame.noise_floor_dbm, frame.firmware, frame.uptime_s)
    head = bytes([len(body)]) + body
    return SYNC + head + crc16(head).to_bytes(2, "big")


def _pack_beacon_v2(frame: BeaconV2) -> bytes:
    # struct pads or cuts a short or long bytes field silently; a wrong size is the caller's error, not a frame.
    sizes = (len(frame.eid), len(frame.sealed_counter), len(frame.mac))
    if sizes != (8, 4, 4):
        raise struct.error(f"eid, sealed counter and MAC are {sizes} bytes, expected (8, 4, 4)")
    return _BEACON_V2.pack(
        frame.version, frame.eid, frame.sealed_counter, int(frame.flags), frame.mac, frame.rssi_dbm, frame.antenna
    )


def _parse_beacon_v2(raw: bytes, payload: bytes) -> BeaconV2:
    if len(payload) != _BEACON_V2.size:
        raise PayloadError(f"v2 beacon payload is {len(payload)} bytes, expected {_BEACON_V2.size}", raw)
    version, eid, sealed, flags, mac, rssi, antenna = _BEACON_V2.unpack(payload)
    if version != BEACON_V2_VERSION:
        raise PayloadError(f"v2 beacon format version {version}, expected {BEACON_V2_VERSION}", raw)
    return BeaconV2(eid, sealed, TagFlags(flags), mac, rssi, antenna, version)


def _parse(raw: bytes) -> Frame:
    """Turn one CRC-checked frame (sync to CRC) into a Frame, or raise."""
    ftype, payload = raw[3], raw[4:-2]
    if ftype == FrameType.BEACON:
        if len(payload) != _BEACON.size:
            raise PayloadError(f"beacon payload is {len(payload)} bytes, expected {_BEACON.size}", raw)
        tag_id, counter, flags, rssi, antenna = _BEACON.unpack(payload)
        return Beacon(tag_id, counter, TagFlags(flags & 0x07), rssi, antenna)
    if ftype == FrameType.MODULE_STATUS:
        if len(payload) != _STATUS.size:
            raise PayloadError(f"status payload is {len(payload)} bytes, expected {_STATUS.size}", raw)
        return ModuleStatus(*_STATUS.unpack(payload))
    if ftype == FrameType.BEACON_V2:
        return _parse_beacon_v2(raw, payload)
    raise UnknownTypeError(f"unknown frame type 0x{ftype:02x}", raw)


class StreamDecoder:
    """What a streaming decoder of sync-delimited frames keeps: the bytes waiting for the rest of a frame, the count
    of frames, skipped bytes and rejections by reason, and the latest rejections with their bytes."""

    def __init__(self, keep_errors: int = 100) -> None:
        self._buf = bytearray()
        self._resyncing = False
        self.frames = 0
        self.skipped_bytes = 0
        self.rejected: Counter[str] = Counter()
        self.recent_errors: deque[FrameError] = deque(maxlen=keep_errors)

    def _reject(self, error: FrameError) -> None:
        self.rejected[error.reason] += 1
        self.recent_errors.append(error)

    def _skip(self, n: int) -> None:
        """Drop n bytes that belong to no frame; report them unless they trail a rejected frame."""
        if not self._resyncing:
            self._reject(GarbageError("bytes outside any frame", bytes(self._buf[:n])))
        self.skipped_bytes += n
        del self._buf[:n]

    def _at_sync(self, sync: bytes) -> bool:
        """Drop the bytes before the next sync pattern; whether the buffer now starts with one. A trailing first byte
        of the pattern is kept: it may be the first half of a sync split across reads."""
        start = self._buf.find(sync)
        if start < 0:
            keep = 1 if self._buf.endswith(sync[:1]) else 0
            if len(self._buf) > keep:
                self._skip(len(self._buf) - keep)
            return False
        if start > 0:
            self._skip(start)
        return True

    def _resync(self) -> None:
        """Skip the sync of a rejected frame; the real frame may start inside its bytes."""
        self._resyncing = True
        self.skipped_bytes += 1
        del self._buf[:1]

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)


class FrameDecoder(StreamDecoder):
    """Streaming decoder: feed it bytes as they arrive, get whole frames back.

    A partial frame waits for more bytes. Garbage, bad lengths and CRC errors are counted
    by reason in `rejected`, kept (with their bytes) in `recent_errors`, and skipped:
    decoding resumes at the next sync pattern. `feed` never raises.
    """

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes from the port; return the frames they complete."""
        buf = self._buf
        buf += data
        out: list[Frame] = []
        while True:
            if not self._at_sync(SYNC):
                break
            if len(buf) < 3:
                break
            length = buf[2]
            if length < 1 or length > MAX_LEN:
                self._reject(BadLengthError(f"length byte {length} outside 1..{MAX_LEN}", bytes(buf[:3])))
                self._resync()
                continue
            total = 2 + 1 + length + 2
            if len(buf) < total:
                break
            raw = bytes(buf[:total])
            if crc16(raw[2:-2]) != int.from_bytes(raw[-2:], "big"):
                self._reject(CrcError("CRC mismatch", raw))
                self._resync()
                continue
            del buf[:total]
            self._resyncing = False
            try:
                out.append(_parse(raw))
            except FrameError as exc:
                self._reject(exc)
                continue
            self.frames += 1
        return out
