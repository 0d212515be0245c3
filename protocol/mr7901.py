"""MR7901 vendor station frames: what a vendor base station sends over TCP, and our replies.

Layout (see hardware/mr7901.md):

    55 AA | LENGTH u16 | COMMAND u16 | SEQUENCE u32 | VERSION u16 | SECURITY u16 | DEVICE ID 16 | DATA | CRC16

LENGTH counts the bytes from LENGTH through DATA (28 + len(DATA)). The CRC is CRC-16/CCITT-FALSE over the
same bytes. Integers are big-endian except the port in a register reply, which is little-endian.
"""

from __future__ import annotations

import functools
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from protocol.frames import BadLengthError, CrcError, FrameError, PayloadError, StreamDecoder, crc16

SYNC = b"\x55\xaa"
HEADER_LENGTH = 28
MAX_DATA = 4096
MAX_LENGTH = HEADER_LENGTH + MAX_DATA
VERSION = 0x0001
TAG_READS_TLV = 0x8B01
DEVICE_ID_SIZE = 16
# A read's status bits: bit 0 is the vendor's alarm (our tag's tamper latch); bit 1, low battery, is our own
# convention, which real stations do not send (hardware/mr7901.md).
STATUS_ALARM = 0x01
STATUS_LOW_BATTERY = 0x02
SERVER_IP_SIZE = 32

_HEADER = struct.Struct(">HHIHH16s")  # length, command, sequence, version, security, device id
_TLV = struct.Struct(">HH")  # type, length of the value
_READ = struct.Struct(">BBIBHBb6s")  # antenna, tag type, tag id, check, carried info, status, rssi, read time
_REGISTER_REPLY = struct.Struct("<B6s32sH")  # result, server time, server IP, port (little-endian on the wire)


class Command(IntEnum):
    """The command codes of the MR7901 protocol; a reply is its request's code with the top bit set."""

    LOGIN = 0x0001
    HEARTBEAT = 0x0003
    TAG_UPLOAD = 0x0004
    REGISTER = 0x0008
    LOGIN_REPLY = 0x8001
    HEARTBEAT_REPLY = 0x8003
    TAG_UPLOAD_REPLY = 0x8004
    REGISTER_REPLY = 0x8008


class UnknownCommandError(FrameError):
    """A frame with a valid CRC but a command this decoder does not know."""

    reason = "unknown_command"


@dataclass(frozen=True, slots=True)
class TagRead:
    """One read of one tag by a vendor station, as the station reports it (17 bytes on the wire)."""

    antenna: int
    tag_type: int
    tag_id: int
    check: int
    carried_info: int
    status: int
    rssi_dbm: int
    read_at_local: datetime  # station local time, naive: the bridge applies the station's time zone

    @property
    def alarm(self) -> bool:
        """Whether the tag reported its alarm (status bit 0)."""
        return bool(self.status & 0x01)


@dataclass(frozen=True, slots=True)
class Register:
    """A station asks to register; its data is the vendor's and is carried as is."""

    device_id: str
    sequence: int
    data: bytes = b""
    version: int = VERSION
    security: int = 0


@dataclass(frozen=True, slots=True)
class RegisterReply:
    """The server's answer to a register: result, its clock, and where the station should connect."""

    device_id: str
    sequence: int
    result: int
    server_time: datetime
    server_ip: str
    port: int
    version: int = VERSION
    security: int = 0


@dataclass(frozen=True, slots=True)
class Login:
    """A station logs in; its data is the vendor's and is carried as is."""

    device_id: str
    sequence: int
    data: bytes = b""
    version: int = VERSION
    security: int = 0


@dataclass(frozen=True, slots=True)
class LoginReply:
    """The server's answer to a login."""

    device_id: str
    sequence: int
    result: int
    version: int = VERSION
    security: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A station's keep-alive; the reply echoes its data."""

    device_id: str
    sequence: int
    data: bytes = b""
    version: int = VERSION
    security: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    """The server's echo of a heartbeat."""

    device_id: str
    sequence: int
    data: bytes = b""
    version: int = VERSION
    security: int = 0


@dataclass(frozen=True, slots=True)
class TagUpload:
    """A batch of tag reads from a station."""

    device_id: str
    sequence: int
    reads: tuple[TagRead, ...]
    version: int = VERSION
    security: int = 0


@dataclass(frozen=True, slots=True)
class TagUploadReply:
    """The server's acknowledgement of a tag upload (empty data)."""

    device_id: str
    sequence: int
    version: int = VERSION
    security: int = 0


Message = Register | RegisterReply | Login | LoginReply | Heartbeat | HeartbeatReply | TagUpload | TagUploadReply
Request = Register | Login | Heartbeat | TagUpload


def register_reply(request: Register, result: int, server_time: datetime, server_ip: str, port: int) -> RegisterReply:
    """The reply to a register, with the request's device id, sequence, version and security."""
    return RegisterReply(
        request.device_id, request.sequence, result, server_time, server_ip, port, request.version, request.security
    )


def login_reply(request: Login, result: int) -> LoginReply:
    """The reply to a login."""
    return LoginReply(request.device_id, request.sequence, result, request.version, request.security)


def heartbeat_reply(request: Heartbeat) -> HeartbeatReply:
    """The reply to a heartbeat: its data echoed."""
    return HeartbeatReply(request.device_id, request.sequence, request.data, request.version, request.security)


def tag_upload_reply(request: TagUpload) -> TagUploadReply:
    """The reply to a tag upload."""
    return TagUploadReply(request.device_id, request.sequence, request.version, request.security)


# --- encoding ---------------------------------------------------------------------------------


def _bcd_time(when: datetime) -> bytes:
    if not 2000 <= when.year <= 2099:
        raise ValueError(f"year {when.year} cannot be sent as two BCD digits (2000..2099)")
    fields = (when.year - 2000, when.month, when.day, when.hour, when.minute, when.second)
    return bytes((v // 10) << 4 | v % 10 for v in fields)


def _ascii_field(text: str, size: int, what: str) -> bytes:
    if not text or not text.isascii() or "\0" in text or len(text) > size:
        raise ValueError(f"{what} must be 1..{size} ASCII characters without NUL, got {text!r}")
    return text.encode("ascii").ljust(size, b"\0")


def _read_bytes(read: TagRead) -> bytes:
    return _READ.pack(
        read.antenna,
        read.tag_type,
        read.tag_id,
        read.check,
        read.carried_info,
        read.status,
        read.rssi_dbm,
        _bcd_time(read.read_at_local),
    )


def _data(message: Message) -> tuple[Command, bytes]:
    if isinstance(message, (Register, Login, Heartbeat, HeartbeatReply)):
        return _COMMAND_OF[type(message)], message.data
    if isinstance(message, RegisterReply):
        ip = _ascii_field(message.server_ip, SERVER_IP_SIZE, "server IP")
        return Command.REGISTER_REPLY, _REGISTER_REPLY.pack(
            message.result, _bcd_time(message.server_time), ip, message.port
        )
    if isinstance(message, LoginReply):
        return Command.LOGIN_REPLY, struct.pack(">B", message.result)
    if isinstance(message, TagUpload):
        value = b"".join(_read_bytes(r) for r in message.reads)
        # No reads are sent as empty data, not as an empty TLV: one canonical form for round trips.
        return Command.TAG_UPLOAD, (_TLV.pack(TAG_READS_TLV, len(value)) + value if value else b"")
    return Command.TAG_UPLOAD_REPLY, b""


def encode(message: Message) -> bytes:
    """Encode one message to the bytes on the TCP stream; ValueError if a field is out of range."""
    try:
        command, data = _data(message)
        head = _HEADER.pack(
            HEADER_LENGTH + len(data),
            command,
            message.sequence,
            message.version,
            message.security,
            _ascii_field(message.device_id, DEVICE_ID_SIZE, "device id"),
        )
    except struct.error as exc:
        raise ValueError(f"{type(message).__name__} field out of range: {exc}") from exc
    if len(data) > MAX_DATA:
        raise ValueError(f"{type(message).__name__} data is {len(data)} bytes, at most {MAX_DATA} are sent")
    body = head + data
    return SYNC + body + crc16(body).to_bytes(2, "big")


# --- decoding ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Head:
    device_id: str
    sequence: int
    version: int
    security: int


# A byte's value as two BCD digits, or -1 when a nibble is over 9.
_BCD_VALUE = tuple((b >> 4) * 10 + (b & 0x0F) if b >> 4 < 10 and b & 0x0F < 10 else -1 for b in range(256))


@functools.lru_cache(maxsize=4096)
def _bcd_datetime(raw6: bytes) -> datetime:
    """The naive datetime of 6 BCD bytes YYMMDDhhmmss; ValueError if not one. Cached: the reads of an upload (a
    second of a station's reads) share a few times, and this was a tenth of the bridge's CPU a read."""
    yy, month, day, hour, minute, second = (_BCD_VALUE[b] for b in raw6)
    if min(yy, month, day, hour, minute, second) < 0:
        raise ValueError(f"a byte of {raw6.hex()} is not two BCD digits")
    return datetime(2000 + yy, month, day, hour, minute, second)


def _parse_time(raw6: bytes, raw: bytes) -> datetime:
    try:
        return _bcd_datetime(raw6)
    except ValueError as exc:
        raise PayloadError(f"time {raw6.hex()} is not a BCD YYMMDDhhmmss date: {exc}", raw) from exc


def _parse_ascii(field: bytes, what: str, raw: bytes) -> str:
    text = field.rstrip(b"\0")
    if not text or b"\0" in text or not text.isascii():
        raise PayloadError(f"{what} {field.hex()} is not NUL-padded ASCII", raw)
    return text.decode("ascii")


def _parse_reads(data: bytes, raw: bytes, unknown_tlvs: Counter[int]) -> tuple[TagRead, ...]:
    reads: list[TagRead] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _TLV.size:
            raise PayloadError(f"{len(data) - offset} bytes left at offset {offset}, too few for a TLV header", raw)
        tlv_type, length = _TLV.unpack_from(data, offset)
        offset += _TLV.size
        if offset + length > len(data):
            raise PayloadError(f"TLV 0x{tlv_type:04x} of {length} bytes runs past the data", raw)
        if tlv_type != TAG_READS_TLV:
            unknown_tlvs[tlv_type] += 1
        elif length % _READ.size:
            raise PayloadError(f"tag reads TLV of {length} bytes is not a multiple of {_READ.size}", raw)
        else:
            for at in range(offset, offset + length, _READ.size):
                antenna, tag_type, tag_id, check, info, status, rssi, when = _READ.unpack_from(data, at)
                reads.append(TagRead(antenna, tag_type, tag_id, check, info, status, rssi, _parse_time(when, raw)))
        offset += length
    return tuple(reads)


def _expect_size(data: bytes, size: int, what: str, raw: bytes) -> None:
    if len(data) != size:
        raise PayloadError(f"{what} data is {len(data)} bytes, expected {size}", raw)


def _parse_register_reply(head: _Head, data: bytes, raw: bytes) -> RegisterReply:
    _expect_size(data, _REGISTER_REPLY.size, "register reply", raw)
    result, when, ip, port = _REGISTER_REPLY.unpack(data)
    return RegisterReply(
        head.device_id,
        head.sequence,
        result,
        _parse_time(when, raw),
        _parse_ascii(ip, "server IP", raw),
        port,
        head.version,
        head.security,
    )


def _parse_login_reply(head: _Head, data: bytes, raw: bytes) -> LoginReply:
    _expect_size(data, 1, "login reply", raw)
    return LoginReply(head.device_id, head.sequence, data[0], head.version, head.security)


def _parse_upload_reply(head: _Head, data: bytes, raw: bytes) -> TagUploadReply:
    _expect_size(data, 0, "tag upload reply", raw)
    return TagUploadReply(head.device_id, head.sequence, head.version, head.security)


def _opaque(kind: type[Register | Login | Heartbeat | HeartbeatReply]) -> Callable[[_Head, bytes, bytes], Message]:
    def parse(head: _Head, data: bytes, raw: bytes) -> Message:
        return kind(head.device_id, head.sequence, data, head.version, head.security)

    return parse


_PARSERS: dict[int, Callable[[_Head, bytes, bytes], Message]] = {
    Command.REGISTER: _opaque(Register),
    Command.LOGIN: _opaque(Login),
    Command.HEARTBEAT: _opaque(Heartbeat),
    Command.HEARTBEAT_REPLY: _opaque(HeartbeatReply),
    Command.REGISTER_REPLY: _parse_register_reply,
    Command.LOGIN_REPLY: _parse_login_reply,
    Command.TAG_UPLOAD_REPLY: _parse_upload_reply,
}
_COMMAND_OF: dict[type, Command] = {
    Register: Command.REGISTER,
    Login: Command.LOGIN,
    Heartbeat: Command.HEARTBEAT,
    HeartbeatReply: Command.HEARTBEAT_REPLY,
}


def _parse(raw: bytes, unknown_tlvs: Counter[int]) -> Message:
    """Turn one CRC-checked frame (sync to CRC) into a Message, or raise a FrameError."""
    _, command, sequence, version, security, device_id = _HEADER.unpack_from(raw, 2)
    data = raw[2 + HEADER_LENGTH : -2]
    if command != Command.TAG_UPLOAD and command not in _PARSERS:
        raise UnknownCommandError(f"unknown command 0x{command:04x}", raw)
    head = _Head(_parse_ascii(device_id, "device id", raw), sequence, version, security)
    if command == Command.TAG_UPLOAD:
        return TagUpload(head.device_id, sequence, _parse_reads(data, raw, unknown_tlvs), version, security)
    return _PARSERS[command](head, data, raw)


class Mr7901Decoder(StreamDecoder):
    """Streaming decoder for one vendor station's TCP stream: feed it bytes as they arrive, get whole messages.

    A partial frame waits for more bytes. Garbage, bad lengths, CRC errors, unknown commands and bad payloads
    are counted by reason in `rejected`, kept (with their bytes) in `recent_errors`, and skipped: decoding
    resumes at the next sync pattern. TLVs of unknown type are skipped and counted by type in `unknown_tlvs`.
    `feed` never raises.
    """

    def __init__(self, keep_errors: int = 100) -> None:
        super().__init__(keep_errors)
        self.unknown_tlvs: Counter[int] = Counter()

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes from the connection; return the messages they complete."""
        buf = self._buf
        buf += data
        out: list[Message] = []
        while True:
            if not self._at_sync(SYNC):
                break
            if len(buf) < 4:
                break
            length = int.from_bytes(buf[2:4], "big")
            if not HEADER_LENGTH <= length <= MAX_LENGTH:
                self._reject(BadLengthError(f"length {length} outside {HEADER_LENGTH}..{MAX_LENGTH}", bytes(buf[:4])))
                self._resync()
                continue
            total = 2 + length + 2
            if len(buf) < total:
                break
            raw = bytes(buf[:total])
            if crc16(raw[2:-2]) != int.from_bytes(raw[-2:], "big"):
                self._reject(CrcError("CRC mismatch", raw))
                self._resync()
                continue
            del buf[:total]
            self._resyncing = False
            unknown_tlvs: Counter[int] = Counter()
            try:
                out.append(_parse(raw, unknown_tlvs))
            except FrameError as exc:
                self._reject(exc)
                continue
            # Counted only for frames that decode, so a rejected frame is counted once, under its reason.
            self.unknown_tlvs.update(unknown_tlvs)
            self.frames += 1
        return out
