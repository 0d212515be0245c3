"""AES-128 over many (key, block) pairs at once, each pair with its own key, in numpy.

The resolution checks the MACs of a whole flush of v2 beacons, each under its own chip's key. One `cryptography`
context per chip costs a key schedule in a Python call (10-30 µs) before its first block; here the key schedules and
the rounds of thousands of pairs run as a few hundred array operations, which also leave the interpreter's lock to
other threads while they run. Checked against `cryptography` (tests/backend/test_aes_many.py): this is the same
cipher, not a new one.

Blocks and keys are (n, 16) uint8 arrays; inside, each is four big-endian 32-bit columns (4, n), the usual table
formulation of the rounds (FIPS-197, section 5, with its SubBytes, ShiftRows and MixColumns folded into four
tables of 256 words).
"""

from __future__ import annotations

import sys
from typing import Final

import numpy as np


def _sbox() -> np.ndarray:
    """The AES S-box, computed (the multiplicative inverse in GF(2^8), then the affine map of FIPS-197 5.1.1). The
    inverses come from powers of the generator 3: 255 steps at import rather than a search per byte."""
    power = [1] * 255
    for i in range(1, 255):
        p = power[i - 1]
        power[i] = p ^ (((p << 1) ^ 0x11B) if p & 0x80 else p << 1)  # p * 3
    log = {p: i for i, p in enumerate(power)}
    inverse = [0] + [power[(255 - log[a]) % 255] for a in range(1, 256)]
    box = []
    for x in inverse:
        y = x
        for shift in range(1, 5):
            y ^= ((x << shift) | (x >> (8 - shift))) & 0xFF
        box.append(y ^ 0x63)
    return np.array(box, dtype=np.uint32)


def _xtime(x: np.ndarray) -> np.ndarray:
    return ((x << 1) ^ np.where(x & 0x80, 0x11B, 0)).astype(np.uint32) & 0xFF


def _ror(word: np.ndarray, bits: int) -> np.ndarray:
    return ((word >> bits) | (word << (32 - bits))) & 0xFFFFFFFF


_S: Final = _sbox()
# T0[x] = (2·S[x], S[x], S[x], 3·S[x]) as one big-endian word; T1..T3 are its byte rotations.
_T0: Final = (_xtime(_S) << 24) | (_S << 16) | (_S << 8) | (_xtime(_S) ^ _S)
_T: Final = np.stack([_T0, _ror(_T0, 8), _ror(_T0, 16), _ror(_T0, 24)]).astype(np.uint32)
_S_SHIFTED: Final = np.stack([_S << 24, _S << 16, _S << 8, _S]).astype(np.uint32)
# Where a word's bytes sit in its native bytes, the most significant first.
_BYTE: Final = (3, 2, 1, 0) if sys.byteorder == "little" else (0, 1, 2, 3)
_RCON: Final = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36]
# Row j of the state takes its bytes from rows j, j+1, j+2, j+3 (ShiftRows on columns of words).
_ROWS: Final = [np.array([(j + k) % 4 for j in range(4)]) for k in range(4)]


def words(blocks: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 → (4, n) uint32, each column of the state one big-endian word."""
    return np.ascontiguousarray(blocks, dtype=np.uint8).view(">u4").reshape(-1, 4).T.astype(np.uint32)


def block_bytes(state: np.ndarray) -> np.ndarray:
    """(4, n) uint32 → (n, 16) uint8."""
    return np.ascontiguousarray(state.T.astype(">u4")).view(np.uint8).reshape(-1, 16)


def expand(keys: np.ndarray) -> np.ndarray:
    """The round keys of AES-128 for (n, 16) uint8 keys: (11, 4, n) uint32."""
    w = words(keys)
    rounds = np.empty((11, 4, w.shape[1]), dtype=np.uint32)
    rounds[0] = w
    for r in range(1, 11):
        prev = rounds[r - 1]
        t = prev[3]
        # SubWord(RotWord(t)) ^ Rcon
        t = (
            _S_SHIFTED[0][(t >> 16) & 0xFF]
            ^ _S_SHIFTED[1][(t >> 8) & 0xFF]
            ^ _S_SHIFTED[2][t & 0xFF]
            ^ _S_SHIFTED[3][t >> 24]
            ^ np.uint32(_RCON[r - 1] << 24)
        )
        out = rounds[r]
        out[0] = prev[0] ^ t
        out[1] = prev[1] ^ out[0]
        out[2] = prev[2] ^ out[1]
        out[3] = prev[3] ^ out[2]
    return rounds


def encrypt(round_keys: np.ndarray, state: np.ndarray) -> np.ndarray:
    """AES-128 of each column of `state` ((4, n) uint32 words, see `words`) under its own round keys (`expand`)."""
    s: np.ndarray = state ^ round_keys[0]
    for r in range(1, 11):
        b = np.ascontiguousarray(s).view(np.uint8).reshape(4, -1, 4)  # each word's bytes as a view: no shift, no mask
        t = _T if r < 10 else _S_SHIFTED  # the last round has no MixColumns
        s = (
            np.take(t[0], b[_ROWS[0], :, _BYTE[0]])
            ^ np.take(t[1], b[_ROWS[1], :, _BYTE[1]])
            ^ np.take(t[2], b[_ROWS[2], :, _BYTE[2]])
            ^ np.take(t[3], b[_ROWS[3], :, _BYTE[3]])
            ^ round_keys[r]
        )
    return s
