"""Resolve a v2 beacon to its chip: look its eid up, check its MAC with the chip's key, open its counter, judge it.

Per chip the resolver keeps the highest counter it accepted (with when and where) and the chip's clock offset,
learned from the windows its beacons resolve in against the times they were heard. A chip whose clock has run
further than the table's neighbouring windows reach still resolves: its eids for the windows its offset puts it in
are kept on the side (few chips, computed with their own key at each advance).

One resolver holds the state of the chips whose beacons it sees; the ingest gives it every v2 beacon in the order
the stations heard them, as far as it can (a beacon delivered late with an older counter than one already accepted
but heard *before* it is consistent, not a replay).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, NamedTuple

import numpy as np

from backend.resolution.evidence import CloneEvidence, Hearing, Verdict
from backend.resolution.opening import open_many
from backend.resolution.table import Candidate, ResolutionTable
from protocol.beacon_v2 import (
    AIR_BYTES,
    EID_BYTES,
    FLAG_VALUES,
    FLAGS_AT,
    FORMAT_VERSION,
    WINDOW_S,
    AirBeacon,
    MacError,
    window_of,
)
from protocol.frames import TagFlags

# The same transmission heard by stations whose zones overlap reaches the backend with their own clocks and
# batching; within this many seconds it is one beacon heard twice, not a replay.
DEFAULT_DUPLICATE_S: Final = 10.0
# Uncertainty of a beacon's heard_at (station clocks, the time a sighting is stamped with) when learning an offset.
HEARD_SLACK_S: Final = 5.0
# How fast a chip's clock may run away (a cold watch crystal ~40 ppm; a margin over it): the learned offset
# interval widens by this much per second since it was last narrowed.
MAX_DRIFT_PPM: Final = 100.0
# A chip's clock is taken to read within this margin of its learned offset when choosing the windows it beacons.
OFFSET_MARGIN_S: Final = 60.0
DEFAULT_UNKNOWN_KEPT: Final = 1000
# From this many (beacon, candidate) pairs on, MACs are checked by arrays rather than key by key (Resolver.open_all).
OPEN_MANY_FROM: Final = 32
# The eid's bytes in a beacon on the air (after the format version).
_EID: Final = slice(1, 1 + EID_BYTES)


@dataclass(slots=True)
class ChipState:
    """What the resolver knows of one chip: its highest accepted beacon and its clock's offset from true time."""

    counter: int
    heard_at: float
    station_id: str
    window: int
    payload: bytes
    # The chip's clock minus true time lies in [offset_lo_s, offset_hi_s] (as of offset_at).
    offset_lo_s: float
    offset_hi_s: float
    offset_at: float

    @property
    def offset_s(self) -> float:
        """The best guess of the chip's clock offset: the middle of what its beacons allow."""
        return (self.offset_lo_s + self.offset_hi_s) / 2

    def learn(self, window: int, heard_at: float) -> None:
        """Narrow the offset by a beacon of `window` heard at `heard_at` (widened first by the drift since)."""
        # _observed() and the widening written out: this runs for every beacon accepted.
        lo = window * WINDOW_S - heard_at - HEARD_SLACK_S
        hi = (window + 1) * WINDOW_S - heard_at + HEARD_SLACK_S
        since = heard_at - self.offset_at
        grow = MAX_DRIFT_PPM * 1e-6 * since if since > 0.0 else 0.0
        new_lo, new_hi = self.offset_lo_s - grow, self.offset_hi_s + grow
        if new_lo < lo:
            new_lo = lo
        if new_hi > hi:
            new_hi = hi
        if new_lo > new_hi:  # the clock was set again (a service visit), or the old interval was wrong: start over
            new_lo, new_hi = lo, hi
        self.offset_lo_s, self.offset_hi_s, self.offset_at = new_lo, new_hi, heard_at


def _observed(window: int, heard_at: float) -> tuple[float, float]:
    """The offsets a chip can have if its beacon of `window` was heard at `heard_at`."""
    return window * WINDOW_S - heard_at - HEARD_SLACK_S, (window + 1) * WINDOW_S - heard_at + HEARD_SLACK_S


class Resolution(NamedTuple):
    """What one beacon turned out to be: its chip, counter, flags and window when known, and the verdict.

    A named tuple, not a frozen dataclass: one is made per beacon, and a frozen dataclass of nine fields takes
    6 µs to make (a tenth of a resolve), a tuple well under one.
    """

    verdict: Verdict
    tag_id: int | None
    counter: int | None
    flags: TagFlags
    window: int | None
    station_id: str
    heard_at: datetime
    payload: bytes
    evidence: CloneEvidence | None = None

    @property
    def is_alarm(self) -> bool:
        """Whether this beacon is cloned-chip evidence (a forgery or a replay)."""
        return self.evidence is not None


class Prepared(NamedTuple):
    """A beacon parsed and its eid looked up: its flags, the chips it may be from, and whether every window held was
    looked in (or only those next to when it was heard). Once `checked` (prepare_all, open_all), `opened` is the
    first candidate whose key makes its MAC, with the counter it unseals, or None if none does; an opened beacon's
    candidates are that chip alone (the others' states are not needed to judge it)."""

    flags: TagFlags
    candidates: list[Candidate]
    complete: bool
    checked: bool = False
    opened: tuple[Candidate, int] | None = None


@dataclass(slots=True)
class _Drifted:
    """The side entries of chips whose clocks run far from true time: eid (a big-endian number) → candidates."""

    entries: dict[int, list[Candidate]] = field(default_factory=dict)
    by_tag: dict[int, list[int]] = field(default_factory=dict)

    def put(self, tag_id: int, candidates: list[tuple[int, Candidate]]) -> None:
        self.drop(tag_id)
        for eid, c in candidates:
            self.entries.setdefault(eid, []).append(c)
        self.by_tag[tag_id] = [eid for eid, _ in candidates]

    def drop(self, tag_id: int) -> None:
        for eid in self.by_tag.pop(tag_id, []):
            left = [c for c in self.entries.get(eid, []) if c.tag_id != tag_id]
            if left:
                self.entries[eid] = left
            else:
                self.entries.pop(eid, None)


class Resolver:
    """Resolves v2 beacons against a ResolutionTable and judges each one (ok, unknown, bad_mac, replay, duplicate)."""

    def __init__(
        self,
        table: ResolutionTable,
        *,
        duplicate_s: float = DEFAULT_DUPLICATE_S,
        unknown_kept: int = DEFAULT_UNKNOWN_KEPT,
    ) -> None:
        self.table = table
        self.duplicate_s = duplicate_s
        self.chips: dict[int, ChipState] = {}
        self.counts: Counter[Verdict] = Counter()
        # The latest beacons no chip resolved, for inspection: (station, heard_at, payload).
        self.unknown: deque[tuple[str, datetime, bytes]] = deque(maxlen=unknown_kept)
        self._drifted = _Drifted()
        self._drifted_index: dict[int, int] = {}  # tag id → table index, for the drifted chips
        self._drifted_centre = table.centre  # the table's centre the side eids were chosen for
        # A chip whose learned offset lies within these bounds beacons, during the table's centre window, only
        # windows the table holds: it needs no side entries.
        self._near_lo_s = -table.before * WINDOW_S + OFFSET_MARGIN_S
        self._near_hi_s = table.after * WINDOW_S - OFFSET_MARGIN_S

    def advance(self, to_window: int) -> None:
        """Move the table to `to_window` (a background builder may call the table's own advance instead)."""
        self.table.advance(to_window)
        self._follow_table()

    def _follow_table(self) -> None:
        """Once the table moved, recompute the side eids of the chips whose clocks run far off for its new centre."""
        centre = self.table.centre
        if centre != self._drifted_centre:
            self._drifted_centre = centre
            for tag_id, index in list(self._drifted_index.items()):
                self._place_drifted(tag_id, index, centre)

    def prepare(self, payload: bytes, heard_at: datetime) -> Prepared:
        """A v2 air payload heard at `heard_at` parsed and its eid looked up: the chips it may be from, whose
        states to load before resolving it. Near its time first, as resolve() looks; in every window held if no
        chip beacons it there (a replay of an old capture is judged against its chip's state). Its MAC is checked
        against them (see prepare_all). BeaconPayloadError when the bytes are not a v2 beacon."""
        AirBeacon.from_bytes(payload)
        prepared = self.prepare_all([payload], [heard_at])[0]
        assert prepared is not None
        return prepared

    def prepare_all(
        self, payloads: list[bytes], heard_at: list[datetime], windows: list[int] | None = None
    ) -> list[Prepared | None]:
        """prepare() of a flush's beacons at once, their MACs then checked against every candidate: what resolve()
        judges without a key of its own. None for bytes that are not a v2 beacon. `windows`, when the caller has
        them, are the windows the beacons were heard in (window_of(heard_at)).

        As arrays from the bytes to the opened MACs (parsed, looked up, opened), so that the usual beacon costs one
        candidate and one Prepared in Python; only beacons that no key opens get their candidate lists."""
        self._follow_table()
        good = [i for i, p in enumerate(payloads) if len(p) == AIR_BYTES]
        air = np.frombuffer(b"".join([payloads[i] for i in good]), dtype=np.uint8).reshape(-1, AIR_BYTES)
        versioned = air[:, 0] == FORMAT_VERSION
        if not versioned.all():
            kept = np.flatnonzero(versioned)
            good, air = [good[k] for k in kept.tolist()], air[kept]
        n = len(good)
        eids = np.ascontiguousarray(air[:, _EID]).view(">u8").reshape(n).astype(np.uint64)
        if windows is None:
            windows = [window_of(at.timestamp()) for at in heard_at]
        heard = np.array([windows[i] for i in good], dtype=np.int64)
        # Near its time: the window it was heard in; for the few beacons no chip sends there (a chip's clock on the
        # other side of a window's edge), the one before and the one after.
        pairs = [self.table.lookup_pairs(eids, heard)]
        looked = np.zeros(n, dtype=bool)
        looked[pairs[0][0]] = True
        aside = np.flatnonzero(~looked)
        if len(aside):
            row, chip, window = self.table.lookup_pairs(
                np.tile(eids[aside], 2), np.concatenate([heard[aside] - 1, heard[aside] + 1])
            )
            pairs.append((aside[row % len(aside)], chip, window))
            looked[pairs[-1][0]] = True
        extra: list[tuple[int, int, int]] = []
        drifted = self._drifted.entries
        if drifted:
            for j, eid in enumerate(eids.tolist()):
                for c in drifted.get(eid, ()):
                    if not self.table.is_retired(c.key_index):
                        extra.append((j, c.key_index, c.window))
        looked[[j for j, _, _ in extra]] = True
        complete = np.flatnonzero(~looked).tolist()  # nothing near its time: looked for in every window held
        for j in complete:
            extra += [(j, c.key_index, c.window) for c in self.table.lookup(air[j, _EID].tobytes())]
        if extra:
            extra.sort(key=_first)  # stable: a beacon's own order kept
            extra_rows, extra_chips, extra_windows = (np.array(c, dtype=np.int64) for c in zip(*extra, strict=True))
            pairs.append((extra_rows, extra_chips, extra_windows))
        if len(pairs) > 1:
            row, chip, window = (np.concatenate(column) for column in zip(*pairs, strict=True))
            order = np.argsort(row, kind="stable")
            row, chip, window = row[order], chip[order], window[order]
        else:
            row, chip, window = pairs[0]
        opened = self._open_pairs(row, chip, window, air)
        flags = air[:, FLAGS_AT].tolist()
        tag_ids = self.table.tag_ids_of(chip)
        is_complete = set(complete)
        out: list[Prepared | None] = [None] * len(payloads)
        starts = np.searchsorted(row, np.arange(n + 1)).tolist()
        chip_list, window_list = chip.tolist(), window.tolist()
        for j, i in enumerate(good):
            found = opened.get(j)
            if found is not None:
                at, counter = found
                c = Candidate(tag_ids[at], window_list[at], chip_list[at])
                out[i] = Prepared(FLAG_VALUES[flags[j]], [c], j in is_complete, True, (c, counter))
                continue
            candidates = [Candidate(tag_ids[k], window_list[k], chip_list[k]) for k in range(starts[j], starts[j + 1])]
            out[i] = Prepared(FLAG_VALUES[flags[j]], candidates, j in is_complete, True, None)
        return out

    def open_all(self, prepared: list[Prepared | None], payloads: list[bytes]) -> list[Prepared | None]:
        """The beacons' MACs checked against all their candidates, in the order the candidates are tried one by
        one; `payloads` are their bytes on the air."""
        pairs = [(j, c) for j, p in enumerate(prepared) if p is not None for c in p.candidates]
        air = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(-1, AIR_BYTES)
        opened = self._open_pairs(
            np.array([j for j, _ in pairs], dtype=np.int64),
            np.array([c.key_index for _, c in pairs], dtype=np.int64),
            np.array([c.window for _, c in pairs], dtype=np.int64),
            air,
        )
        out: list[Prepared | None] = []
        for j, p in enumerate(prepared):
            found = opened.get(j)
            if p is None:
                out.append(None)
            elif found is None:
                out.append(p._replace(checked=True, opened=None))
            else:
                c = pairs[found[0]][1]
                out.append(p._replace(candidates=[c], checked=True, opened=(c, found[1])))
        return out

    def _open_pairs(
        self, row: np.ndarray, chip: np.ndarray, window: np.ndarray, air: np.ndarray
    ) -> dict[int, tuple[int, int]]:
        """(beacon `row[k]`, chip `chip[k]` in `window[k]`) pairs, grouped by beacon in the order they are tried;
        `air` the beacons' bytes, (n, AIR_BYTES). For each beacon some key opens: the first such pair and the
        counter it unseals. Many at once by arrays (backend.resolution.opening), a few with each chip's own key (the
        arrays' fixed cost, about a millisecond, is that of some 30 keys)."""
        opened: dict[int, tuple[int, int]] = {}
        if len(row) < OPEN_MANY_FROM:
            for k, (j, index, w) in enumerate(zip(row.tolist(), chip.tolist(), window.tolist(), strict=True)):
                if j in opened:
                    continue
                try:
                    counter = self.table.chip_key(index).open(w, AirBeacon.from_bytes(air[j].tobytes()))
                except MacError:
                    continue
                opened[j] = (k, counter)
            return opened
        # Each (chip, window) once: a passage's two beacons are mostly of one chip in one window.
        pair = (chip.astype(np.uint64) << np.uint64(32)) | window.astype(np.uint64)
        _, once, under = np.unique(pair, return_index=True, return_inverse=True)
        ok, counters = open_many(self.table.keys_of(chip[once]), window[once], air[row], under)
        verified = np.flatnonzero(ok)
        # A beacon's first pair that verifies (the pairs are grouped by beacon, in the order tried).
        beacons, first = np.unique(row[verified], return_index=True)
        at = verified[first]
        for j, k, counter in zip(beacons.tolist(), at.tolist(), counters[at].tolist(), strict=True):
            opened[j] = (k, counter)
        return opened

    def forget(self, tag_ids: Iterable[int]) -> None:
        """Drop these chips' states, kept elsewhere (the ingest keeps them in the database and loads them for each
        flush), so that memory holds only the chips of the flush at hand; a chip whose clock runs far off keeps its
        state, which its side entries are placed by."""
        for tag_id in tag_ids:
            if tag_id not in self._drifted_index:
                self.chips.pop(tag_id, None)

    def load(self, states: dict[int, ChipState | None]) -> None:
        """Take these chips' states as the truth (None: the chip has none yet), replacing what this resolver
        held: several ingest workers share them through the database (backend.ingest.v2)."""
        for tag_id, state in states.items():
            if state is None:
                self.chips.pop(tag_id, None)
            else:
                self.chips[tag_id] = state

    def resolve(
        self,
        payload: bytes,
        heard_at: datetime,
        station_id: str = "",
        prepared: Prepared | None = None,
        heard_s: float | None = None,
    ) -> Resolution:
        """Judge one v2 air payload heard at `heard_at` (timezone-aware) by `station_id`; `prepared` is what
        prepare() made of it (the ingest prepares every beacon of a flush first, to lock their chips' states), and
        `heard_s` the same time as seconds since the epoch, when the caller has it.

        BeaconPayloadError (from protocol.beacon_v2) when the bytes are not a v2 beacon at all: the caller keeps them
        as a reject, like any malformed input.
        """
        t = heard_at.timestamp() if heard_s is None else heard_s
        if prepared is not None and prepared.opened is not None:
            # The usual beacon: its chip's key made its MAC when it was prepared; nothing left to look up.
            c, counter = prepared.opened
            return self._judge(c, counter, prepared.flags, payload, heard_at, t, station_id)
        prepared = prepared or self.prepare(payload, heard_at)
        self._follow_table()
        if prepared.opened is not None:
            return self._judge(*prepared.opened, prepared.flags, payload, heard_at, t, station_id)
        beacon, candidates = AirBeacon.from_bytes(payload), list(prepared.candidates)
        opened = None if prepared.checked else self._open(candidates, beacon)
        if opened is None and not prepared.complete:
            # Not near its time: a beacon of a window further back (a replay of an old capture; a late delivery is
            # given a table of its own window) or a collision with another chip's eid there. Every window held.
            tried = set(candidates)
            further = [c for c in self.table.lookup(beacon.eid) if c not in tried]
            opened = self._open(further, beacon)
            candidates += further
        if opened is not None:
            return self._judge(*opened, beacon.flags, payload, heard_at, t, station_id)
        if not candidates:
            self.counts[Verdict.UNKNOWN] += 1
            self.unknown.append((station_id, heard_at, payload))
            return Resolution(Verdict.UNKNOWN, None, None, beacon.flags, None, station_id, heard_at, payload)
        # No candidate's key made this MAC: someone beacons a known chip's eid without its key.
        c = candidates[0]
        self.counts[Verdict.BAD_MAC] += 1
        state = self.chips.get(c.tag_id)
        evidence = CloneEvidence(
            c.tag_id,
            Verdict.BAD_MAC,
            Hearing(station_id, heard_at, None, c.window, payload),
            _hearing(state, heard_at) if state else None,
        )
        return Resolution(
            Verdict.BAD_MAC, c.tag_id, None, beacon.flags, c.window, station_id, heard_at, payload, evidence
        )

    def _open(self, candidates: list[Candidate], beacon: AirBeacon) -> tuple[Candidate, int] | None:
        """The first candidate whose key makes the beacon's MAC, with the counter it opens; None if none does."""
        for c in candidates:
            try:
                return c, self.table.chip_key(c.key_index).open(c.window, beacon)
            except MacError:
                continue
        return None

    def _judge(
        self,
        c: Candidate,
        counter: int,
        flags: TagFlags,
        payload: bytes,
        heard_at: datetime,
        t: float,
        station_id: str,
    ) -> Resolution:
        state = self.chips.get(c.tag_id)
        verdict = Verdict.OK
        if state is not None and counter <= state.counter:
            if counter == state.counter and payload == state.payload and abs(t - state.heard_at) <= self.duplicate_s:
                verdict = Verdict.DUPLICATE
            elif counter < state.counter and t < state.heard_at + self.duplicate_s:
                # Heard before the beacon already accepted (give or take two stations' clocks), delivered late by a
                # station's spool or batching: consistent, not a replay.
                verdict = Verdict.OK
            else:
                verdict = Verdict.REPLAY
        self.counts[verdict] += 1
        evidence = None
        if verdict is Verdict.REPLAY:
            assert state is not None
            evidence = CloneEvidence(
                c.tag_id, verdict, Hearing(station_id, heard_at, counter, c.window, payload), _hearing(state, heard_at)
            )
        elif verdict is Verdict.OK:
            self._accept(c, counter, payload, t, station_id, state)
        return Resolution(verdict, c.tag_id, counter, flags, c.window, station_id, heard_at, payload, evidence)

    def _accept(
        self, c: Candidate, counter: int, payload: bytes, t: float, station_id: str, state: ChipState | None
    ) -> None:
        if state is None:
            lo, hi = _observed(c.window, t)
            state = ChipState(counter, t, station_id, c.window, payload, lo, hi, t)
            self.chips[c.tag_id] = state
        else:
            state.learn(c.window, t)
            if counter > state.counter:
                state.counter, state.heard_at, state.station_id = counter, t, station_id
                state.window, state.payload = c.window, payload
        # The usual chip, whose clock is near true time, needs no side entries: decided here without a call.
        if c.tag_id in self._drifted_index or not self._near_lo_s <= state.offset_s <= self._near_hi_s:
            self._place_drifted(c.tag_id, c.key_index, self._drifted_centre)

    def _place_drifted(self, tag_id: int, index: int, centre: int) -> None:
        """Put on the side the eids of the windows a chip's clock reads during the table's centre window that the
        table does not hold (none for a chip whose clock is near true time: most chips)."""
        offset = self.chips[tag_id].offset_s  # callers leave out the usual chip (near true time, not drifted)
        first = window_of(centre * WINDOW_S + offset - OFFSET_MARGIN_S)
        last = window_of((centre + 1) * WINDOW_S + offset + OFFSET_MARGIN_S)
        held = self.table.windows
        wanted = [w for w in range(first, last + 1) if w not in held]
        if not wanted:
            if tag_id in self._drifted_index:
                del self._drifted_index[tag_id]
                self._drifted.drop(tag_id)
            return
        self._drifted_index[tag_id] = index
        eids = self.table.chip_key(index).eids(wanted)
        self._drifted.put(
            tag_id,
            [(int.from_bytes(eid, "big"), Candidate(tag_id, w, index)) for eid, w in zip(eids, wanted, strict=True)],
        )

    def offset_s(self, tag_id: int) -> float | None:
        """The learned clock offset of a chip (its clock minus true time), None for a chip not seen yet."""
        state = self.chips.get(tag_id)
        return None if state is None else state.offset_s


def _first(pair: tuple[int, int, int]) -> int:
    return pair[0]


def _hearing(state: ChipState, like: datetime) -> Hearing:
    return Hearing(
        state.station_id,
        datetime.fromtimestamp(state.heard_at, like.tzinfo),
        state.counter,
        state.window,
        state.payload,
    )
