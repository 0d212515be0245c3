"""The station's copy of the stolen-chip list, so it can flag stolen chips even while offline, and the checks a
hot list passes before the station takes it.

A list names stolen v1 chips by tag id and stolen v2 chips by the ephemeral ids they will beacon in the windows ahead
(`Hotlist.eids`): the station matches what it hears without holding any chip key. It keeps the eids of the current
window, the one before it (a chip whose clock runs slow still beacons it) and those ahead; an eid of a window long
past would only match a replay of an old beacon, so it is dropped as its window passes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.beacon_v2 import window_of
from protocol.messages import HOTLIST_EID_WINDOWS_MAX, HOTLIST_VERSION_MAX, Hotlist, MessageError, parse_tag, utcnow
from protocol.signing import SignatureError, verify_hotlist

# Windows before the station's current one whose eids it still matches: a chip's clock may run minutes slow
# (hardware/tag-beacon.md, "Clock drift"), and so beacon the eid of the window before the station's.
EID_WINDOWS_BEHIND: Final = 1
WINDOW_NUMBER_LIMIT: Final = 2**63

RefusalReason = Literal["too_large", "invalid", "too_many_tags", "no_public_key", "unsigned", "bad_signature"]


class HotlistRefused(ValueError):
    """A hot-list payload the station does not take; `reason` is one of a fixed set (a metrics label)."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RefusalReason = reason
        self.detail = detail


def check_hotlist(payload: bytes, key: Ed25519PublicKey | None, *, max_bytes: int, max_tags: int) -> Hotlist:
    """The hot list in `payload` if it is within bounds and signed by the backend; HotlistRefused otherwise."""
    # Size first, before a byte is parsed: the payload is anyone's who can publish to the broker.
    if len(payload) > max_bytes:
        raise HotlistRefused("too_large", f"{len(payload)} bytes, more than {max_bytes}")
    if key is None:
        return _checked(payload, None, max_tags)
    # The stations of one process (a fleet, the vendor bridge's thousand) all get the same retained list at once:
    # it is parsed and its signature checked once, not once a station. A refusal is not kept: it is checked again.
    return _checked_with(payload, key.public_bytes_raw(), max_tags)


@functools.lru_cache(maxsize=4)
def _tag_ids(tags: tuple[str, ...]) -> frozenset[int]:
    """A list's tag ids as numbers: one set for every station of the process that takes the same list."""
    return frozenset(parse_tag(t) for t in tags)


@functools.lru_cache(maxsize=4)
def _checked_with(payload: bytes, key: bytes, max_tags: int) -> Hotlist:
    return _checked(payload, Ed25519PublicKey.from_public_bytes(key), max_tags)


def _checked(payload: bytes, key: Ed25519PublicKey | None, max_tags: int) -> Hotlist:
    try:
        message: Hotlist = Hotlist.parse(payload)
    except MessageError as exc:
        raise HotlistRefused("invalid", exc.reason) from exc
    if len(message.tags) > max_tags:
        raise HotlistRefused("too_many_tags", f"{len(message.tags)} tags, more than {max_tags}")
    # A window's eids are one per stolen v2 chip: the bound on tags bounds them too.
    for window, eids in (message.eids or {}).items():
        # The contract's window numbers run to 20 digits; the spool keeps one in SQLite's signed 64 bits.
        if int(window) >= WINDOW_NUMBER_LIMIT:
            raise HotlistRefused("invalid", f"window {window} is beyond any window a chip beacons in")
        if len(eids) > max_tags:
            raise HotlistRefused("too_many_tags", f"{len(eids)} eids in window {window}, more than {max_tags}")
    if key is None:
        raise HotlistRefused("no_public_key", "no BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY to check its signature with")
    try:
        verify_hotlist(message, key)
    except SignatureError as exc:
        raise HotlistRefused("unsigned" if not message.signature else "bad_signature", str(exc)) from exc
    return message


class HotList:
    """The current set of stolen chips (v1 tag ids, v2 ephemeral ids per window) and the version of their list."""

    def __init__(
        self,
        version: int = -1,
        tags: Iterable[int] = (),
        eids: Mapping[int, Iterable[bytes]] | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.version = version
        self.clock = clock
        self.tags: frozenset[int] = frozenset(tags)
        self.eids: dict[int, frozenset[bytes]] = {}
        # Tag ids and eids in one set: an int never equals bytes, and a v1 beacon's lookup costs what it did.
        self._stolen: frozenset[int | bytes] = self.tags
        self._set_eids(eids or {})

    def __contains__(self, tag: object) -> bool:
        return tag in self._stolen

    @property
    def eid_count(self) -> int:
        """Ephemeral ids held, over all windows kept."""
        return sum(len(e) for e in self.eids.values())

    def offer(self, version: int, tags: Iterable[int], eids: Mapping[int, Iterable[bytes]] | None = None) -> bool:
        """Take the list if its version is newer than ours and one the backend can make; say whether it was taken."""
        # Retained messages are redelivered on every reconnect and several backend workers may
        # publish: an older or equal version must never roll the list back. A version beyond any the backend
        # makes (say, saved in the spool before lists were signed) would lock every later list out.
        if version <= self.version or not 0 <= version <= HOTLIST_VERSION_MAX:
            return False
        self.version = version
        self.tags = frozenset(tags)
        self._set_eids(eids or {})
        return True

    def offer_message(self, message: Hotlist) -> bool:
        """`offer` for a validated Hotlist payload."""
        return self.offer(message.version, _tag_ids(tuple(message.tags)), message.eids_by_window())

    def drop_past_eids(self) -> bool:
        """Forget the eids of windows now past (see EID_WINDOWS_BEHIND); say whether any went."""
        oldest = window_of(self.clock().timestamp()) - EID_WINDOWS_BEHIND
        if not self.eids or min(self.eids) >= oldest:
            return False
        self._set_eids(self.eids)
        return True

    def _set_eids(self, eids: Mapping[int, Iterable[bytes]]) -> None:
        oldest = window_of(self.clock().timestamp()) - EID_WINDOWS_BEHIND
        # The nearest windows, should a list (or a spool) ever hold more than a list may carry.
        kept = sorted(w for w in eids if w >= oldest)[:HOTLIST_EID_WINDOWS_MAX]
        self.eids = {w: frozenset(eids[w]) for w in kept}
        self._stolen = self.tags.union(*self.eids.values())
