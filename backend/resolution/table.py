"""The resolution table: every active v2 chip's ephemeral ids for the windows around now, eid → candidate chips.

Most of a table's build is the chips' AES key schedules, one per chip; derive_eids computes them for many chips at
once in numpy (backend.resolution.aes_many) and, with them, the chip's eids for the windows held *and* `ahead`
windows after them. Those wait unsorted (8 bytes a chip a window) until `advance` takes them, which then only sorts.
A million key schedules are paid once every `ahead` windows, not at every advance (docs/benchmarks.md, "v2
resolution in the backend", measures this against keeping a million encryptors alive, which takes about 1 KB a
chip).

Readers never lock: what they read is one immutable snapshot, swapped in whole by whoever advances the table (a
background builder), so a lookup sees either the old windows or the new ones, never a half-built one.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import numpy as np

from backend.resolution import aes_many
from protocol.beacon_v2 import EID_LABEL, KEY_BYTES, ChipKey

# A ChipKey (its encryptor and MAC subkey) takes about 1.1 KB; the MAC check needs one, so the chips seen lately
# keep theirs.
DEFAULT_KEY_CACHE: Final = 65_536
# Chips whose eids derive_eids computes in one go (about 3 MiB of round keys and state each).
DERIVE_CHUNK: Final = 16_384


class ResolutionError(ValueError):
    """Base error of the resolution tables."""


class TableKeyError(ResolutionError):
    """A chip key that is not 16 bytes; names the tag (never the key)."""


class WindowRangeError(ResolutionError):
    """A window outside what a table can hold (negative, or not a 64-bit number)."""


class Candidate(NamedTuple):
    """A chip that beacons an eid in a window: the MAC decides which candidate, if any, sent a beacon (a tuple:
    one is made per beacon)."""

    tag_id: int
    window: int
    key_index: int  # the chip's place in its table (for its key)


@dataclass(frozen=True, slots=True)
class _Window:
    """One window's eids sorted, beside the index of the chip that beacons each; chips added later on the side."""

    eids: array[int]
    chips: array[int]
    side: dict[int, list[int]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.eids) * 8 + len(self.chips) * 4


@dataclass(frozen=True, slots=True)
class _Snapshot:
    centre: int
    windows: dict[int, _Window]


def _blocks(windows: range) -> bytes:
    for w in (windows.start, windows.stop - 1):
        if not 0 <= w < 2**64:
            raise WindowRangeError(f"window {w} is not a 64-bit unsigned number")
    return b"".join(EID_LABEL + w.to_bytes(8, "big") for w in windows)


def derive_eids(keys: bytes | bytearray | memoryview, windows: range) -> np.ndarray:
    """The eids (as big-endian 64-bit numbers) of chips with these concatenated keys over `windows`: chips × windows.

    AES-128 with a key per row (backend.resolution.aes_many), `DERIVE_CHUNK` chips at a time: one key schedule per
    chip for all the windows, and no Python object made per chip or eid. Its array operations leave the
    interpreter's lock to the other threads while they run, so a table moving in the background (backend.ingest.v2)
    holds up no flush or alert for long.
    """
    every = np.frombuffer(keys, dtype=np.uint8).reshape(-1, KEY_BYTES)
    blocks = aes_many.words(np.frombuffer(_blocks(windows), dtype=np.uint8).reshape(-1, 16))
    out = np.empty((len(every), len(windows)), dtype=np.uint64)
    for start in range(0, len(every), DERIVE_CHUNK):
        round_keys = aes_many.expand(every[start : start + DERIVE_CHUNK])
        n = round_keys.shape[2]
        for j in range(len(windows)):
            s = aes_many.encrypt(round_keys, np.repeat(blocks[:, j : j + 1], n, axis=1))
            # The eid is the block's first 8 bytes (EID_BYTES): its first two big-endian words.
            out[start : start + n, j] = (s[0].astype(np.uint64) << np.uint64(32)) | s[1]
    return out


def _sorted_window(eids: np.ndarray) -> _Window:
    order = np.argsort(eids, kind="stable")
    sorted_eids = array("Q", eids[order].astype("=u8").tobytes())
    chips = array("I", order.astype("=u4").tobytes())
    return _Window(sorted_eids, chips)


class ResolutionTable:
    """The eids of a set of chips ((tag id, key) pairs) for `centre` and `before`/`after` windows around it."""

    def __init__(
        self,
        chips: Iterable[tuple[int, bytes]],
        centre: int,
        *,
        before: int = 1,
        after: int = 1,
        ahead: int = 8,
        key_cache: int = DEFAULT_KEY_CACHE,
    ) -> None:
        if before < 0 or after < 0 or ahead < 0:
            raise ResolutionError(f"before={before}, after={after}, ahead={ahead}: none may be negative")
        self.before, self.after, self.ahead = before, after, ahead
        self._tag_ids = array("Q")
        keys = bytearray()
        for tag_id, key in chips:
            if len(key) != KEY_BYTES:
                raise TableKeyError(f"tag {tag_id}: a chip key is {KEY_BYTES} bytes, not {len(key)}")
            self._tag_ids.append(tag_id)
            keys += key
        # Immutable, replaced whole when chips are added: a reader's array over it (keys_of) stays valid.
        self._keys = bytes(keys)
        self._retired: frozenset[int] = frozenset()
        self._build_lock = threading.Lock()  # one builder at a time; readers never take it
        self._key_lock = threading.Lock()
        self._key_cache: OrderedDict[int, ChipKey] = OrderedDict()
        self._key_cache_size = key_cache
        # Unsorted eids of windows computed ahead of the ones held: window → eid per chip index.
        self._pending: dict[int, np.ndarray] = {}
        self.key_schedules = 0  # how many chip key schedules the builds have paid, for the bench and the tests
        self._snapshot = _Snapshot(centre, {})
        self._snapshot = _Snapshot(centre, self._build(self._range(centre)))

    def _range(self, centre: int) -> range:
        return range(centre - self.before, centre + self.after + 1)

    @property
    def centre(self) -> int:
        """The window the table is centred on (the current one, by the backend's clock)."""
        return self._snapshot.centre

    @property
    def windows(self) -> range:
        """The windows whose eids the table holds."""
        return self._range(self._snapshot.centre)

    def __len__(self) -> int:
        return len(self._tag_ids)

    @property
    def nbytes(self) -> int:
        """Memory of the sorted windows, the eids computed ahead, the keys and tag ids (not the key cache)."""
        snap = self._snapshot
        return (
            sum(w.nbytes for w in snap.windows.values())
            + sum(int(a.nbytes) for a in self._pending.values())
            + len(self._keys)
            + len(self._tag_ids) * 8
        )

    def _build(self, wanted: range) -> dict[int, _Window]:
        """Sorted windows for `wanted`: taken from the eids computed ahead, or computed with a key schedule per chip
        for the missing windows and `ahead` more."""
        held = self._snapshot.windows
        missing = [w for w in wanted if w not in held and w not in self._pending]
        if missing:
            span = range(missing[0], wanted.stop + self.ahead)
            eids = derive_eids(self._keys, span)
            self.key_schedules += len(self._tag_ids)
            for j, w in enumerate(span):
                if w not in held:
                    self._pending[w] = eids[:, j].copy()
        out: dict[int, _Window] = {}
        for w in wanted:
            if w in held:
                out[w] = held[w]
            else:
                out[w] = _sorted_window(self._pending.pop(w))
        for w in [w for w in self._pending if w < wanted.start]:
            del self._pending[w]
        return out

    def advance(self, to_window: int) -> None:
        """Hold the windows around `to_window`: add those coming into range, drop those leaving it.

        Safe while other threads look eids up: they keep reading the old snapshot until the new one is complete.
        """
        with self._build_lock:
            self._snapshot = _Snapshot(to_window, self._build(self._range(to_window)))

    def add_chips(self, chips: Iterable[tuple[int, bytes]]) -> None:
        """Chips fitted since the table was built: their eids go beside the sorted ones of every window held and
        into the windows computed ahead."""
        with self._build_lock:
            first = len(self._tag_ids)
            added = bytearray()
            for tag_id, key in chips:
                if len(key) != KEY_BYTES:
                    raise TableKeyError(f"tag {tag_id}: a chip key is {KEY_BYTES} bytes, not {len(key)}")
                self._tag_ids.append(tag_id)
                added += key
            if not added:
                return
            self._keys = self._keys + added
            snap = self._snapshot
            wanted = sorted(set(snap.windows) | set(self._pending))
            span = range(wanted[0], wanted[-1] + 1)
            eids = derive_eids(added, span)
            self.key_schedules += len(added) // KEY_BYTES
            windows: dict[int, _Window] = {}
            for j, w in enumerate(span):
                column = eids[:, j]
                if w in self._pending:
                    self._pending[w] = np.concatenate([self._pending[w], column])
                if w in snap.windows:
                    old = snap.windows[w]
                    side = {k: list(v) for k, v in old.side.items()}
                    for i, eid in enumerate(column.tolist()):
                        side.setdefault(eid, []).append(first + i)
                    windows[w] = _Window(old.eids, old.chips, side)
            self._snapshot = _Snapshot(snap.centre, windows)

    def around(self, centre: int) -> ResolutionTable:
        """The same chips (the retired ones retired) around another window, holding its neighbours and nothing
        ahead: for beacons delivered long after they were heard (a station's spool after an outage). A key
        schedule per chip, like a first build."""
        with self._build_lock:
            tag_ids, keys, retired = array("Q", self._tag_ids), bytes(self._keys), self._retired
        chips = ((t, keys[i * KEY_BYTES : (i + 1) * KEY_BYTES]) for i, t in enumerate(tag_ids))
        other = ResolutionTable(chips, centre, before=1, after=1, ahead=0, key_cache=self._key_cache_size)
        other._retired = retired
        return other

    def retire(self, tag_id: int) -> None:
        """A chip taken off a bike (replaced, or the bike deregistered): its eids no longer resolve."""
        with self._build_lock:
            try:
                index = self._tag_ids.index(tag_id)
            except ValueError:
                return
            self._retired = self._retired | {index}
            with self._key_lock:
                self._key_cache.pop(index, None)

    def is_retired(self, index: int) -> bool:
        """Whether the chip at `index` was retired."""
        return index in self._retired

    def lookup(self, eid: bytes) -> list[Candidate]:
        """Every chip (with its window) that beacons `eid` in any window held; empty if none. (A flush's beacons
        are looked up near their own times by lookup_pairs.)"""
        key = int.from_bytes(eid, "big")
        out: list[Candidate] = []
        tag_ids, retired = self._tag_ids, self._retired
        held = self._snapshot.windows
        for w, table in held.items():
            eids = table.eids
            i = bisect_left(eids, key)
            while i < len(eids) and eids[i] == key:
                index = table.chips[i]
                if index not in retired:
                    out.append(Candidate(tag_ids[index], w, index))
                i += 1
            for index in table.side.get(key, ()):
                if index not in retired:
                    out.append(Candidate(tag_ids[index], w, index))
        return out

    def lookup_pairs(self, eids: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every chip that beacons each eid (uint64, big-endian as numbers) in the window beside it (int64), if that
        window is held: `lookup` for a whole flush at once, one sorted search a window and no object per chip. As
        three arrays of the same length: which eid (its place in `eids`), the chip's index, the window. An eid's
        chips come in the table's order (the sorted ones, then those added later); retired chips are left out."""
        rows: list[np.ndarray] = []
        chips: list[np.ndarray] = []
        held, retired = self._snapshot.windows, self._retired
        for w in np.unique(windows).tolist():
            table = held.get(w)
            if table is None:
                continue
            at = np.flatnonzero(windows == w)
            sorted_eids = np.frombuffer(table.eids, dtype=np.uint64)
            wanted = eids[at]
            start = np.searchsorted(sorted_eids, wanted, side="left")
            count = np.searchsorted(sorted_eids, wanted, side="right") - start
            hit = np.flatnonzero(count)
            found = count[hit]
            # One chip an eid but for the rare collision: the k-th chip of an eid is `start + k`.
            step = np.arange(int(found.sum())) - np.repeat(np.cumsum(found) - found, found)
            rows.append(np.repeat(at[hit], found))
            chips.append(np.frombuffer(table.chips, dtype=np.uint32)[np.repeat(start[hit], found) + step])
            if table.side:
                side = [
                    (j, index)
                    for j, eid in zip(at.tolist(), wanted.tolist(), strict=True)
                    for index in table.side.get(eid, ())
                ]
                rows.append(np.array([j for j, _ in side], dtype=np.intp))
                chips.append(np.array([index for _, index in side], dtype=np.uint32))
        if not rows:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        row, chip = np.concatenate(rows).astype(np.intp), np.concatenate(chips).astype(np.int64)
        # By eid, each one's chips in the order found (side entries after the sorted ones of the same window).
        order = np.argsort(row, kind="stable")
        row, chip = row[order], chip[order]
        if retired:
            kept = ~np.isin(chip, np.fromiter(retired, dtype=np.int64))
            row, chip = row[kept], chip[kept]
        return row, chip, windows[row]

    def chip_key(self, index: int) -> ChipKey:
        """The ready ChipKey of the chip at `index` (cached for the chips seen lately)."""
        with self._key_lock:
            chip_key = self._key_cache.get(index)
            if chip_key is not None:
                self._key_cache.move_to_end(index)
                return chip_key
        chip_key = ChipKey(self._keys[index * KEY_BYTES : (index + 1) * KEY_BYTES])
        with self._key_lock:
            self._key_cache[index] = chip_key
            if len(self._key_cache) > self._key_cache_size:
                self._key_cache.popitem(last=False)
        return chip_key

    def keys_of(self, indices: list[int] | np.ndarray) -> np.ndarray:
        """The keys of the chips at `indices`, (n, 16) uint8, for opening their beacons in bulk
        (backend.resolution.opening)."""
        every = np.frombuffer(self._keys, dtype=np.uint8).reshape(-1, KEY_BYTES)
        return every[np.asarray(indices, dtype=np.intp)]

    def tag_ids_of(self, indices: np.ndarray) -> list[int]:
        """The tag ids of the chips at `indices`."""
        ids: list[int] = np.frombuffer(self._tag_ids, dtype=np.uint64)[indices].tolist()
        return ids

    def tag_id(self, index: int) -> int:
        """The tag id of the chip at `index`."""
        return int(self._tag_ids[index])

    def index_of(self, tag_id: int) -> int:
        """The index of a chip by its tag id (a scan: for the few drifted chips, not per beacon)."""
        return self._tag_ids.index(tag_id)
