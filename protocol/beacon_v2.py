"""Version 2 tag beacons: a rotating ephemeral id, a sealed counter and a truncated MAC (hardware/tag-beacon.md).

A v2 chip holds a 128-bit key written at fitting. In every time window (`WINDOW_S`, numbered from the Unix epoch) it
beacons an ephemeral id only the key's holder can compute, its beacon counter encrypted under a pad of that window, its
flags, and an AES-CMAC over all of it. A stranger with a radio sees an id that changes every window and a counter that
does not count; a clone without the key cannot make a beacon whose MAC verifies.

Every value here is derived from the chip key with AES-128 on one 16-byte block (`cryptography`), so the chip's
firmware needs one AES block cipher and nothing else. The reader frame that carries a v2 beacon (TYPE 0x11) is
`protocol.frames.BeaconV2`; this module builds and checks what it carries.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from hmac import compare_digest
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from protocol.frames import BeaconV2, TagFlags

__all__ = [
    "AIR_BYTES",
    "COUNTER_MAX",
    "EID_BYTES",
    "EID_LABEL",
    "FLAG_VALUES",
    "FLAGS_AT",
    "FORMAT_VERSION",
    "KEY_BYTES",
    "MAC_BYTES",
    "MAC_KEY_BLOCK",
    "MAC_LABEL",
    "PAD_LABEL",
    "WINDOW_S",
    "AirBeacon",
    "BeaconPayloadError",
    "BeaconV2Error",
    "ChipKey",
    "ChipKeyError",
    "EidTable",
    "MacError",
    "eid_table",
    "heard",
    "key_check_value",
    "window_of",
]

WINDOW_S: Final = 900  # 15 minutes: the ephemeral id changes four times an hour
KEY_BYTES: Final = 16
EID_BYTES: Final = 8
COUNTER_BYTES: Final = 4
COUNTER_MAX: Final = 2**32 - 1
MAC_BYTES: Final = 4
FORMAT_VERSION: Final = 0x02

# Each derived value is AES_k of one block that starts with its own 8-byte label, so no two ever share an input
# (public for the resolution's bulk forms of the same derivations, backend.resolution).
EID_LABEL: Final = b"BGv2-eid"
PAD_LABEL: Final = b"BGv2-ctr"
MAC_KEY_BLOCK: Final = b"BGv2-mac-subkey\x00"
_KCV_BLOCK: Final = b"BGv2-key-check\x00\x00"
MAC_LABEL: Final = b"BGv2-mac"
_WINDOW: Final = struct.Struct(">Q")
# version, eid, sealed counter, flags, MAC: the bytes on the air after the radio's own preamble, sync and CRC.
_AIR: Final = struct.Struct(">B8s4sB4s")
AIR_BYTES: Final = _AIR.size
# The flags byte's 256 values, made once: the backend parses every beacon of a flush, and an IntFlag made from an int
# costs a call into enum's machinery each time.
FLAG_VALUES: Final = tuple(TagFlags(b) for b in range(256))
# Where the flags byte sits in the bytes on the air (after the version, the eid and the sealed counter).
FLAGS_AT: Final = 1 + EID_BYTES + COUNTER_BYTES


class BeaconV2Error(ValueError):
    """Base error of v2 beacons."""


class BeaconPayloadError(BeaconV2Error):
    """Bytes that are not a v2 beacon payload; carries the bytes."""

    def __init__(self, message: str, raw: bytes) -> None:
        super().__init__(f"{message}: {raw.hex(' ')}")
        self.raw = raw


class MacError(BeaconV2Error):
    """A v2 beacon whose MAC was not made with the chip key for that window: a forgery or a corrupted beacon."""


class ChipKeyError(BeaconV2Error):
    """A chip key that is not 16 bytes."""


def window_of(unix_s: float) -> int:
    """The window number a Unix time falls in."""
    return int(unix_s // WINDOW_S)


def _block(label: bytes, window: int) -> bytes:
    if not 0 <= window < 2**64:
        raise BeaconV2Error(f"window {window} is not a 64-bit unsigned number")
    return label + _WINDOW.pack(window)


@dataclass(frozen=True, slots=True)
class AirBeacon:
    """One v2 beacon as it is sent: what any receiver sees, before a station adds RSSI and antenna."""

    eid: bytes
    sealed_counter: bytes
    flags: TagFlags
    mac: bytes
    version: int = FORMAT_VERSION

    def to_bytes(self) -> bytes:
        """The payload bytes on the air (AIR_BYTES long)."""
        if len(self.eid) != EID_BYTES or len(self.sealed_counter) != COUNTER_BYTES or len(self.mac) != MAC_BYTES:
            raise BeaconPayloadError("field of the wrong size", self.eid + self.sealed_counter + self.mac)
        return _AIR.pack(self.version, self.eid, self.sealed_counter, int(self.flags) & 0xFF, self.mac)

    def signed_part(self) -> bytes:
        """The payload without its MAC: what the MAC covers (with the window number)."""
        return self.to_bytes()[:-MAC_BYTES]

    @classmethod
    def from_bytes(cls, raw: bytes) -> AirBeacon:
        """Parse a payload; BeaconPayloadError (and nothing else) when the bytes are not one."""
        if len(raw) != AIR_BYTES:
            raise BeaconPayloadError(f"v2 beacon payload is {len(raw)} bytes, expected {AIR_BYTES}", raw)
        version, eid, sealed, flags, mac = _AIR.unpack(raw)
        if version != FORMAT_VERSION:
            raise BeaconPayloadError(f"beacon format version {version}, expected {FORMAT_VERSION}", raw)
        # Reserved flag bits stay in the object as sent: they are under the MAC, so dropping them would break it.
        return cls(eid, sealed, FLAG_VALUES[flags], mac, version)

    def frame(self, rssi_dbm: int, antenna: int) -> BeaconV2:
        """The reader frame a radio module writes when it hears this beacon."""
        return BeaconV2(self.eid, self.sealed_counter, self.flags, self.mac, rssi_dbm, antenna, self.version)


def heard(frame: BeaconV2) -> AirBeacon:
    """The air beacon a reader frame carries."""
    return AirBeacon(frame.eid, frame.sealed_counter, frame.flags, frame.mac, frame.version)


class ChipKey:
    """One chip's key with its AES encryptor and MAC subkey ready: derive ephemeral ids, seal and open beacons.

    The key itself is never printed (repr shows only the key check value).
    """

    __slots__ = ("_aes", "_mac_key", "check_value")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ChipKeyError(f"a chip key is {KEY_BYTES} bytes, not {len(key)}")
        self._aes: CipherContext = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        self._mac_key = self._aes.update(MAC_KEY_BLOCK)
        self.check_value = self._aes.update(_KCV_BLOCK)[:3]

    def __repr__(self) -> str:
        return f"ChipKey(kcv={self.check_value.hex()})"

    def eid(self, window: int) -> bytes:
        """The ephemeral id the chip beacons in `window`."""
        return self._aes.update(_block(EID_LABEL, window))[:EID_BYTES]

    def eids(self, windows: Iterable[int]) -> list[bytes]:
        """The ephemeral ids of several windows in one call to the cipher."""
        out = self._aes.update(b"".join(_block(EID_LABEL, w) for w in windows))
        return [out[i : i + EID_BYTES] for i in range(0, len(out), 16)]

    def _pad(self, window: int) -> bytes:
        return self._aes.update(_block(PAD_LABEL, window))[:COUNTER_BYTES]

    def mac(self, window: int, signed_part: bytes) -> bytes:
        """The truncated AES-CMAC of a beacon's bytes in `window`."""
        cmac = CMAC(algorithms.AES(self._mac_key))
        cmac.update(MAC_LABEL + _WINDOW.pack(window) + signed_part)
        return cmac.finalize()[:MAC_BYTES]

    def seal(self, window: int, counter: int, flags: TagFlags) -> AirBeacon:
        """The beacon the chip sends with `counter` and `flags` in `window`."""
        if not 0 <= counter <= COUNTER_MAX:
            raise BeaconV2Error(f"counter {counter} is not a 32-bit unsigned number")
        pad = self._pad(window)
        sealed = bytes(a ^ b for a, b in zip(counter.to_bytes(COUNTER_BYTES, "big"), pad, strict=True))
        unsigned = AirBeacon(self.eid(window), sealed, flags, b"\x00" * MAC_BYTES)
        return AirBeacon(unsigned.eid, sealed, flags, self.mac(window, unsigned.signed_part()))

    def verify(self, window: int, beacon: AirBeacon) -> bool:
        """Whether the beacon's MAC was made with this key in `window` (constant-time compare)."""
        return compare_digest(self.mac(window, beacon.signed_part()), beacon.mac)

    def open(self, window: int, beacon: AirBeacon) -> int:
        """The beacon's counter; MacError unless its MAC verifies for this key and window."""
        if not self.verify(window, beacon):
            raise MacError(f"the beacon's MAC is not this chip's for window {window} (kcv {self.check_value.hex()})")
        pad = self._pad(window)
        return int.from_bytes(bytes(a ^ b for a, b in zip(beacon.sealed_counter, pad, strict=True)), "big")


def key_check_value(key: bytes) -> bytes:
    """Three bytes that tell whether two parties hold the same key without revealing it (AES of a fixed block)."""
    return ChipKey(key).check_value


class EidTable:
    """The ephemeral ids of many chips over a range of windows, sorted: eid → (chip id, window) candidates.

    Eids sit in one sorted array of 64-bit numbers beside an array of slots (chip index × windows + window index),
    12 bytes an eid (a dict of Python ints would take some 130); a lookup is a bisection. Two chips on one eid in
    the windows held (rare: see hardware/tag-beacon.md) are both kept; the MAC tells which one sent a beacon.
    """

    def __init__(self, chip_ids: array[int], windows: range, eids: array[int], slots: array[int]) -> None:
        if len(eids) != len(slots):
            raise BeaconV2Error(f"{len(eids)} eids but {len(slots)} slots")
        self.chip_ids = chip_ids
        self.windows = windows
        self._eids = eids
        self._slots = slots

    def lookup(self, eid: bytes) -> list[tuple[int, int]]:
        """Every (chip id, window) that beacons `eid` in the windows held; empty if none."""
        key = int.from_bytes(eid, "big")
        eids, n = self._eids, len(self.windows)
        i = bisect_left(eids, key)
        out: list[tuple[int, int]] = []
        while i < len(eids) and eids[i] == key:
            slot = self._slots[i]
            out.append((self.chip_ids[slot // n], self.windows[slot % n]))
            i += 1
        return out

    @property
    def collisions(self) -> int:
        """How many eids more than one (chip, window) beacons."""
        eids = self._eids
        return sum(1 for i in range(1, len(eids)) if eids[i] == eids[i - 1] and (i < 2 or eids[i - 2] != eids[i]))

    @property
    def nbytes(self) -> int:
        """The memory the table's arrays take."""
        return sum(a.buffer_info()[1] * a.itemsize for a in (self.chip_ids, self._eids, self._slots))

    def __len__(self) -> int:
        return len(self._eids)


def eid_table(chips: Iterable[tuple[int, bytes]], windows: range) -> EidTable:
    """The resolution table of `chips` ((chip id, key) pairs) over `windows`: one AES call per chip for all windows."""
    ids = array("Q")
    blocks = b"".join(_block(EID_LABEL, w) for w in windows)
    n = len(windows)
    # Each entry packed as eid << 32 | slot: one sort of plain ints orders by eid (then slot), with no key function.
    packed: list[int] = []
    append = packed.append
    for index, (chip_id, key) in enumerate(chips):
        if len(key) != KEY_BYTES:
            raise ChipKeyError(f"chip {chip_id}: a chip key is {KEY_BYTES} bytes, not {len(key)}")
        ids.append(chip_id)
        out = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(blocks)
        base = index * n
        for i in range(n):
            append(int.from_bytes(out[16 * i : 16 * i + EID_BYTES], "big") << 32 | (base + i))
    if len(packed) >= 2**32:
        raise BeaconV2Error(f"{len(packed)} eids do not fit a table's 32-bit slots")
    packed.sort()
    eids = array("Q", [p >> 32 for p in packed])
    slots = array("I", [p & 0xFFFFFFFF for p in packed])
    return EidTable(ids, windows, eids, slots)
