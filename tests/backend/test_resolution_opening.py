"""v2 beacons opened in bulk (backend.resolution.opening over aes_many) give exactly what ChipKey.open gives one by
one: the same cipher, the same MAC verdicts, the same counters, and the same candidate chosen when several share an
eid."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from backend.resolution import Candidate, ResolutionTable, Resolver, aes_many
from backend.resolution import resolver as resolver_module
from backend.resolution.opening import open_many
from backend.resolution.resolver import Prepared
from protocol.beacon_v2 import AIR_BYTES, WINDOW_S, AirBeacon, BeaconPayloadError, ChipKey, MacError
from protocol.frames import TagFlags

W0 = 1_995_504


def _aes(keys: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    return aes_many.block_bytes(aes_many.encrypt(aes_many.expand(keys), aes_many.words(blocks)))


def _rows(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, 16)


def test_aes_is_the_fips_197_cipher() -> None:
    # FIPS-197, appendix C.1: AES-128.
    out = _aes(_rows(bytes(range(16))), _rows(bytes.fromhex("00112233445566778899aabbccddeeff")))
    assert out.tobytes().hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


def test_aes_of_many_pairs_is_cryptographys_pair_by_pair() -> None:
    rng = random.Random(5)
    keys, blocks = rng.randbytes(16 * 3000), rng.randbytes(16 * 3000)
    expected = b"".join(
        Cipher(algorithms.AES(keys[i : i + 16]), modes.ECB()).encryptor().update(blocks[i : i + 16])
        for i in range(0, len(keys), 16)
    )
    assert _aes(_rows(keys), _rows(blocks)).tobytes() == expected


def _one_by_one(key: bytes, window: int, payload: bytes) -> tuple[bool, int | None]:
    try:
        return True, ChipKey(key).open(window, AirBeacon.from_bytes(payload))
    except MacError:
        return False, None


def test_opening_in_bulk_agrees_with_chipkey_open_on_good_and_spoiled_beacons() -> None:
    rng = random.Random(11)
    cases: list[tuple[bytes, int, bytes]] = []
    for i in range(1500):
        key = rng.randbytes(16)
        window = rng.randrange(0, 2**40)
        payload = bytearray(ChipKey(key).seal(window, rng.getrandbits(32), TagFlags(rng.getrandbits(8))).to_bytes())
        spoil = i % 5
        if spoil == 1:  # a bit flipped anywhere after the version byte
            payload[rng.randrange(1, AIR_BYTES)] ^= 1 << rng.randrange(8)
        elif spoil == 2:  # the right beacon, judged in the next window
            window += 1
        elif spoil == 3:  # another chip's key
            key = rng.randbytes(16)
        cases.append((key, window, bytes(payload)))
    ok, counters = open_many(
        _rows(b"".join(k for k, _, _ in cases)),
        np.array([w for _, w, _ in cases], dtype=np.uint64),
        np.frombuffer(b"".join(p for _, _, p in cases), dtype=np.uint8).reshape(-1, AIR_BYTES),
    )
    got = [(bool(g), int(c) if g else None) for g, c in zip(ok, counters, strict=True)]
    assert got == [_one_by_one(k, w, p) for k, w, p in cases]
    assert sum(g for g, _ in got) == 600  # two cases in five are left as sealed


def test_beacons_sharing_a_chip_and_window_are_opened_as_each_would_be_alone() -> None:
    """A passage's first and last beacons are mostly of one chip in one window: open_many computes that pair's
    keys, pad and MAC subkeys once (`under`), and each beacon still gets its own verdict and counter."""
    rng = random.Random(13)
    keys = [rng.randbytes(16) for _ in range(40)]
    windows = [W0 + rng.randrange(3) for _ in keys]
    under: list[int] = []
    payloads: list[bytes] = []
    for i in range(400):
        k = rng.randrange(len(keys))
        payload = bytearray(ChipKey(keys[k]).seal(windows[k], i, TagFlags(i % 8)).to_bytes())
        if i % 7 == 0:
            payload[rng.randrange(1, AIR_BYTES)] ^= 1 << rng.randrange(8)  # spoiled: no longer this chip's MAC
        under.append(k)
        payloads.append(bytes(payload))
    ok, counters = open_many(
        _rows(b"".join(keys)),
        np.array(windows, dtype=np.uint64),
        np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(-1, AIR_BYTES),
        np.array(under, dtype=np.intp),
    )
    got = [(bool(g), int(c) if g else None) for g, c in zip(ok, counters, strict=True)]
    assert got == [_one_by_one(keys[k], windows[k], p) for k, p in zip(under, payloads, strict=True)]
    assert 0 < sum(g for g, _ in got) < len(got)


@pytest.mark.parametrize("by_arrays", [True, False], ids=["by arrays", "key by key"])
def test_open_all_takes_the_first_candidate_whose_key_makes_the_mac(
    by_arrays: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resolver_module, "OPEN_MANY_FROM", 0 if by_arrays else 10**9)
    rng = random.Random(2)
    pairs = [(0x100 + i, rng.randbytes(16)) for i in range(3)]
    resolver = Resolver(ResolutionTable(pairs, W0))
    sealed = ChipKey(pairs[2][1]).seal(W0, 77, TagFlags(0))
    wrong, right = Candidate(0x101, W0, 1), Candidate(0x102, W0, 2)
    prepared = [
        Prepared(sealed.flags, [wrong, right, Candidate(0x102, W0, 2)], complete=False),
        Prepared(sealed.flags, [wrong], complete=False),
        Prepared(sealed.flags, [], complete=True),
        None,  # bytes that were no v2 beacon
    ]
    first, none, empty, malformed = resolver.open_all(prepared, [sealed.to_bytes()] * 4)
    assert first is not None and first.checked and first.opened == (right, 77)
    assert none is not None and none.checked and none.opened is None
    assert empty is not None and empty.checked and empty.opened is None
    assert malformed is None


def test_a_flush_prepared_at_once_is_each_beacon_prepared_alone() -> None:
    """prepare_all over a flush (arrays) against prepare() beacon by beacon (key by key): chips of the build and
    fitted later, a retired chip, beacons of the windows next to their time and of older ones held, forgeries, eids
    no chip sends, bytes that are no beacon."""
    rng = random.Random(8)
    built = [(0x1000 + i, rng.randbytes(16)) for i in range(300)]
    fitted = [(0x2000 + i, rng.randbytes(16)) for i in range(20)]
    table = ResolutionTable(built, W0, before=4, after=1)
    table.add_chips(fitted)
    table.retire(built[0][0])
    resolver = Resolver(table)
    t0 = W0 * WINDOW_S + 100.0
    payloads: list[bytes] = []
    heard: list[datetime] = []
    for n, (_, key) in enumerate(built + fitted):
        window = W0 + rng.choice([0, 0, 0, -1, 1, -3, -4])
        payload = bytearray(ChipKey(key).seal(window, n, TagFlags(n % 8)).to_bytes())
        if n % 17 == 0:
            payload[-1] ^= 0x40  # forged: a known eid with a MAC not of the key
        payloads.append(bytes(payload))
        heard.append(datetime.fromtimestamp(t0 + rng.uniform(-30, 30), UTC))
    payloads += [b"\x02" + rng.randbytes(AIR_BYTES - 1), b"\x01" + rng.randbytes(AIR_BYTES - 1), b"\x02\x00"]
    heard += [heard[0]] * 3
    alone = []
    for payload, at in zip(payloads, heard, strict=True):
        try:
            alone.append(resolver.prepare(payload, at))
        except BeaconPayloadError:
            alone.append(None)
    together = resolver.prepare_all(payloads, heard)
    assert together == alone
    opened = [p for p in together if p is not None and p.opened is not None]
    assert len(opened) == 300 + 20 - 1 - len(range(0, 320, 17)) + (0 in range(0, 320, 17))
