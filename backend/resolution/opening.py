"""Open many v2 beacons at once: each one's MAC checked and counter unsealed under its candidate chip's key.

The same derivations as `protocol.beacon_v2.ChipKey.open` for one beacon (hardware/tag-beacon.md, "The key"): the
MAC key is AES_k of MAC_KEY_BLOCK, the MAC the first 4 bytes of the AES-CMAC (RFC 4493) of MAC_LABEL, the window
and the beacon's bytes before its MAC, and the counter's pad the first 4 bytes of AES_k of PAD_LABEL and the window.
Here they run for a whole flush's (beacon, candidate) pairs in a few hundred array operations (backend.resolution.
aes_many), instead of a key schedule and a CMAC object in Python per pair. tests/backend/test_resolution_opening.py
checks every verdict and counter against ChipKey.open.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from backend.resolution import aes_many
from protocol.beacon_v2 import AIR_BYTES, COUNTER_BYTES, EID_BYTES, MAC_BYTES, MAC_KEY_BLOCK, MAC_LABEL, PAD_LABEL

_MAC_KEY_WORDS: Final = aes_many.words(np.frombuffer(MAC_KEY_BLOCK, dtype=np.uint8).reshape(1, 16))
_MAC_LABEL_WORDS: Final = np.frombuffer(MAC_LABEL, dtype=">u4").astype(np.uint32)
_PAD_LABEL_WORDS: Final = np.frombuffer(PAD_LABEL, dtype=">u4").astype(np.uint32)
# The CMAC's last block: the 14 signed bytes, then the padding 0x80 0x00 (RFC 4493, 2.4).
_SIGNED_BYTES: Final = AIR_BYTES - MAC_BYTES
_PADDING: Final = np.array([0x80] + [0] * (15 - _SIGNED_BYTES), dtype=np.uint8)
# The sealed counter's bytes: after the format version and the eid (protocol.beacon_v2.AirBeacon).
_SEALED: Final = slice(1 + EID_BYTES, 1 + EID_BYTES + COUNTER_BYTES)


def _labelled(label: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(4, n) words of the blocks label || window (8 bytes, big-endian)."""
    n = len(windows)
    out = np.empty((4, n), dtype=np.uint32)
    out[0], out[1] = label[0], label[1]
    out[2] = (windows >> np.uint64(32)).astype(np.uint32)
    out[3] = (windows & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return out


def _double(x: np.ndarray) -> np.ndarray:
    """The CMAC subkey step (RFC 4493, 2.3): the 128-bit words shifted left by one, 0x87 folded in on a carry."""
    out = (x << 1) & 0xFFFFFFFF
    out[:3] |= x[1:] >> 31
    out[3] ^= np.where(x[0] >> 31, np.uint32(0x87), np.uint32(0))
    return out


def open_many(
    keys: np.ndarray, windows: np.ndarray, payloads: np.ndarray, under: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For m (chip key, window) pairs, chip keys (m, 16) uint8 and windows (m,) int, and n beacon payloads (n,
    AIR_BYTES) uint8, each checked under the pair `under` names (n,) (by default n = m, payload i under pair i).
    Returns whether each beacon's MAC is its chip's for its window (bool, n) and the counter it unseals (uint32, n;
    only meaningful where the MAC verified).

    What depends on the chip and window alone (the key schedules, the pad, the MAC subkeys, the CMAC's first block)
    is computed once a pair: a passage's first and last beacons are mostly of one chip in one window."""
    n = len(payloads)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.uint32)
    m = len(windows)
    w = np.asarray(windows, dtype=np.uint64)
    chip_rounds = aes_many.expand(keys)
    pad = aes_many.encrypt(chip_rounds, _labelled(_PAD_LABEL_WORDS, w))[0]
    mac_key = aes_many.encrypt(chip_rounds, np.repeat(_MAC_KEY_WORDS, m, axis=1))
    mac_rounds = aes_many.expand(aes_many.block_bytes(mac_key))
    k2 = _double(_double(aes_many.encrypt(mac_rounds, np.zeros((4, m), dtype=np.uint32))))
    first = aes_many.encrypt(mac_rounds, _labelled(_MAC_LABEL_WORDS, w)) ^ k2  # x1, with the last block's subkey
    if under is not None:
        pad, mac_rounds, first = pad[under], np.take(mac_rounds, under, axis=2), first[:, under]
    last = np.empty((n, 16), dtype=np.uint8)
    last[:, :_SIGNED_BYTES] = payloads[:, :_SIGNED_BYTES]
    last[:, _SIGNED_BYTES:] = _PADDING
    tag = aes_many.encrypt(mac_rounds, first ^ aes_many.words(last))[0]
    mac = np.ascontiguousarray(payloads[:, _SIGNED_BYTES:]).view(">u4").reshape(n).astype(np.uint32)
    sealed = np.ascontiguousarray(payloads[:, _SEALED]).view(">u4").reshape(n).astype(np.uint32)
    return tag == mac, sealed ^ pad
