"""The station's hot list: only a newer version replaces it, and only a list within bounds signed by the backend."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from gateway.hotlist import HotList, HotlistRefused, check_hotlist
from protocol.messages import Hotlist
from protocol.signing import generate_signing_key, public_key_of, read_public_key, read_signing_key, sign_hotlist


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


def _signed(key: str, version: int = 1_764_410_400_000, tags: list[str] | None = None) -> Hotlist:
    message = Hotlist(version=version, issued_at=datetime.now(UTC), tags=tags if tags is not None else ["0000BEEF"])
    return sign_hotlist(message, read_signing_key(key))


def test_check_hotlist_takes_a_list_signed_with_the_backends_key() -> None:
    key = generate_signing_key()
    message = _signed(key)
    taken = check_hotlist(message.to_json(), read_public_key(public_key_of(key)), max_bytes=4096, max_tags=10)
    assert taken == message


@pytest.mark.parametrize(
    ("reason", "max_bytes", "max_tags", "payload_of"),
    [
        ("too_large", 100, 10, lambda m: m.to_json()),
        ("too_many_tags", 4096, 1, lambda m: m.model_copy(update={"tags": ["00000001", "00000002"]}).to_json()),
        ("invalid", 4096, 10, lambda m: b'{"v":1,"version":1,"issued_at":"2025-03-01T08:30:00Z","tags":[]}'),
        ("unsigned", 4096, 10, lambda m: m.model_copy(update={"signature": ""}).to_json()),
        ("bad_signature", 4096, 10, lambda m: m.model_copy(update={"tags": ["00C0FFEE"]}).to_json()),
        ("bad_signature", 4096, 10, lambda m: m.model_copy(update={"signature": "AAAA"}).to_json()),
    ],
)
def test_check_hotlist_refuses_with_a_reason(
    reason: str, max_bytes: int, max_tags: int, payload_of: Callable[[Hotlist], bytes]
) -> None:
    key = generate_signing_key()
    with pytest.raises(HotlistRefused) as info:
        check_hotlist(
            payload_of(_signed(key)), read_public_key(public_key_of(key)), max_bytes=max_bytes, max_tags=max_tags
        )
    assert info.value.reason == reason


def test_a_list_taken_once_is_not_parsed_again_and_a_forgery_of_it_is_still_refused() -> None:
    # The stations of one process share the check of a list they all get; a forged copy (other bytes, or the same
    # bytes checked with another key) is checked afresh.
    key = generate_signing_key()
    public = read_public_key(public_key_of(key))
    payload = _signed(key, tags=["DEADBEEF", "00C0FFEE"]).to_json()
    first = check_hotlist(payload, public, max_bytes=4096, max_tags=10)
    assert check_hotlist(bytes(payload), public, max_bytes=4096, max_tags=10) is first
    forged = payload.replace(b"00C0FFEE", b"00BADBAD")
    with pytest.raises(HotlistRefused, match="bad_signature"):
        check_hotlist(forged, public, max_bytes=4096, max_tags=10)
    other = read_public_key(public_key_of(generate_signing_key()))
    with pytest.raises(HotlistRefused, match="bad_signature"):
        check_hotlist(payload, other, max_bytes=4096, max_tags=10)
    a, b = HotList(), HotList()
    assert a.offer_message(first) and b.offer_message(first)
    assert a.tags == b.tags == {0xDEADBEEF, 0x00C0FFEE}


def test_a_station_without_the_public_key_takes_no_list() -> None:
    with pytest.raises(HotlistRefused) as info:
        check_hotlist(_signed(generate_signing_key()).to_json(), None, max_bytes=4096, max_tags=10)
    assert info.value.reason == "no_public_key"


def test_a_version_beyond_what_the_backend_makes_is_never_taken_even_from_the_spool() -> None:
    # A spool written before lists were signed may hold a forged version; it must not lock later lists out.
    hotlist = HotList()
    assert not hotlist.offer(2**63 - 1, [1])
    assert hotlist.offer(1_764_410_400_000, [2])
    assert (hotlist.version, hotlist.tags) == (1_764_410_400_000, frozenset({2}))
