"""The station's copy of the stolen-chip list, so it can flag stolen chips even while offline, and the checks a
hot list passes before the station takes it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.messages import HOTLIST_VERSION_MAX, Hotlist, MessageError, parse_tag
from protocol.signing import SignatureError, verify_hotlist

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
    try:
        message: Hotlist = Hotlist.parse(payload)
    except MessageError as exc:
        raise HotlistRefused("invalid", exc.reason) from exc
    if len(message.tags) > max_tags:
        raise HotlistRefused("too_many_tags", f"{len(message.tags)} tags, more than {max_tags}")
    if key is None:
        raise HotlistRefused("no_public_key", "no BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY to check its signature with")
    try:
        verify_hotlist(message, key)
    except SignatureError as exc:
        raise HotlistRefused("unsigned" if not message.signature else "bad_signature", str(exc)) from exc
    return message


class HotList:
    """The current set of stolen tag ids and the version of the list they came from."""

    def __init__(self, version: int = -1, tags: Iterable[int] = ()) -> None:
        self.version = version
        self.tags: frozenset[int] = frozenset(tags)

    def __contains__(self, tag_id: object) -> bool:
        return tag_id in self.tags

    def offer(self, version: int, tags: Iterable[int]) -> bool:
        """Take the list if its version is newer than ours and one the backend can make; say whether it was taken."""
        # Retained messages are redelivered on every reconnect and several backend workers may
        # publish: an older or equal version must never roll the list back. A version beyond any the backend
        # makes (say, saved in the spool before lists were signed) would lock every later list out.
        if version <= self.version or not 0 <= version <= HOTLIST_VERSION_MAX:
            return False
        self.version = version
        self.tags = frozenset(tags)
        return True

    def offer_message(self, message: Hotlist) -> bool:
        """`offer` for a validated Hotlist payload."""
        return self.offer(message.version, (parse_tag(t) for t in message.tags))
