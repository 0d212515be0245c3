"""The station's hot list: only a newer version replaces it."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.hotlist import HotList
from protocol.messages import Hotlist


def test_only_a_newer_version_replaces_the_hot_list() -> None:
    hotlist = HotList()
    assert hotlist.offer(3, [1, 2])
    assert not hotlist.offer(3, [9])
    assert not hotlist.offer(2, [9])
    assert (hotlist.version, hotlist.tags) == (3, frozenset({1, 2}))
    assert hotlist.offer(4, [])
    assert 1 not in hotlist


def test_version_zero_is_accepted_by_an_empty_station() -> None:
    hotlist = HotList()
    message = Hotlist(version=0, issued_at=datetime.now(UTC), tags=["0000BEEF"])
    assert hotlist.offer_message(message)
    assert 0xBEEF in hotlist
