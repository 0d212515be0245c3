"""The station's copy of the stolen-chip list, so it can flag stolen chips even while offline."""

from __future__ import annotations

from collections.abc import Iterable

from protocol.messages import Hotlist, parse_tag


class HotList:
    """The current set of stolen tag ids and the version of the list they came from."""

    def __init__(self, version: int = -1, tags: Iterable[int] = ()) -> None:
        self.version = version
        self.tags: frozenset[int] = frozenset(tags)

    def __contains__(self, tag_id: object) -> bool:
        return tag_id in self.tags

    def offer(self, version: int, tags: Iterable[int]) -> bool:
        """Take the list if its version is newer than ours; say whether it was taken."""
        # Retained messages are redelivered on every reconnect and several backend workers may
        # publish: an older or equal version must never roll the list back.
        if version <= self.version:
            return False
        self.version = version
        self.tags = frozenset(tags)
        return True

    def offer_message(self, message: Hotlist) -> bool:
        """`offer` for a validated Hotlist payload."""
        return self.offer(message.version, (parse_tag(t) for t in message.tags))
