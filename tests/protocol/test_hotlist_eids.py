"""The hot list's optional `eids` (stolen v2 chips' ephemeral ids per window): under the same signature, and a list
without them is signed, sent and verified exactly as before."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from protocol.beacon_v2 import ChipKey, window_of
from protocol.messages import HOTLIST_EID_WINDOWS_MAX, Hotlist, MessageError
from protocol.signing import (
    SignatureError,
    generate_signing_key,
    public_key_of,
    read_public_key,
    read_signing_key,
    sign_hotlist,
    verify_hotlist,
)

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SIGNING = generate_signing_key()
KEY = read_signing_key(SIGNING)
PUBLIC = read_public_key(public_key_of(SIGNING))


def stolen_eids(windows: range) -> dict[str, list[str]]:
    """The eids two stolen chips beacon in `windows`, as the hot list carries them."""
    chips = [ChipKey(bytes([1]) * 16), ChipKey(bytes([2]) * 16)]
    return {str(w): [chip.eid(w).hex() for chip in chips] for w in windows}


def test_a_list_without_eids_signs_and_serialises_as_before() -> None:
    hotlist = Hotlist(version=12, issued_at=NOW, tags=["0000BEEF", "00C0FFEE"])
    # The signed bytes of a list of before issue 17, written out: a signature made then still verifies now.
    before = b"bikeguard-hotlist/2\n12\n2026-11-29T12:00:00.000000+00:00\n0000BEEF,00C0FFEE"
    assert hotlist.signed_bytes() == before
    assert b"eids" not in hotlist.to_json()
    signed = sign_hotlist(hotlist, KEY)
    verify_hotlist(Hotlist.parse(signed.to_json()), PUBLIC)
    assert Hotlist.parse(signed.to_json()).eids is None


def test_eids_round_trip_and_are_covered_by_the_signature() -> None:
    now = window_of(NOW.timestamp())
    eids = stolen_eids(range(now, now + 4))
    signed = sign_hotlist(Hotlist(version=12, issued_at=NOW, tags=["0000BEEF"], eids=eids), KEY)
    parsed = Hotlist.parse(signed.to_json())
    verify_hotlist(parsed, PUBLIC)
    assert parsed == signed
    assert parsed.eids_by_window()[now + 1][0] == ChipKey(bytes([1]) * 16).eid(now + 1)
    other = dict(eids)
    other[str(now)] = [eids[str(now)][0]]
    changes: list[dict[str, dict[str, list[str]] | None]] = [
        {"eids": None},
        {"eids": {}},
        {"eids": other},
        {"eids": {**eids, str(now + 4): []}},
        {"eids": {k: v for k, v in eids.items() if k != str(now + 3)}},
    ]
    for change in changes:
        with pytest.raises(SignatureError):
            verify_hotlist(parsed.model_copy(update=change), PUBLIC)


def test_window_order_in_the_json_does_not_change_what_is_signed() -> None:
    eids = stolen_eids(range(8, 12))
    reordered = dict(reversed(list(eids.items())))
    a = Hotlist(version=1, issued_at=NOW, tags=[], eids=eids)
    assert a.signed_bytes() == Hotlist(version=1, issued_at=NOW, tags=[], eids=reordered).signed_bytes()


@pytest.mark.parametrize(
    "eids",
    [
        '{"7":["0011223344556677aa"]}',  # too long
        '{"7":["00112233445566"]}',  # too short
        '{"7":["00112233445566AA"]}',  # upper case
        '{"7":["00112233445566GG"]}',
        '{"007":["0011223344556677"]}',  # one window, one spelling
        '{"-1":["0011223344556677"]}',
        '{"7":"0011223344556677"}',
        '["0011223344556677"]',
    ],
)
def test_malformed_eids_are_refused(eids: str) -> None:
    raw = f'{{"v":2,"version":1,"issued_at":"2026-11-29T12:00:00Z","tags":[],"eids":{eids}}}'.encode()
    with pytest.raises(MessageError, match="eids"):
        Hotlist.parse(raw)


def test_more_windows_than_a_list_carries_are_refused() -> None:
    with pytest.raises(ValueError, match="eids"):
        Hotlist(version=1, issued_at=NOW, tags=[], eids=stolen_eids(range(HOTLIST_EID_WINDOWS_MAX + 1)))
    assert Hotlist(version=1, issued_at=NOW, tags=[], eids=stolen_eids(range(HOTLIST_EID_WINDOWS_MAX))).eids
