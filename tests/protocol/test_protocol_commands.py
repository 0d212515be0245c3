"""The signed command to a station: its golden example (docs/architecture.md), its canonical signed bytes, bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.messages import COMMAND_MAX_BYTES, Hotlist, MessageError, StationCommand
from protocol.signing import SignatureError, read_public_key, read_signing_key, sign, verify

# The example in docs/architecture.md ("Commands to stations"), signed with the key whose 32 bytes are 0, 1, … 31.
GOLDEN_SIGNING_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
GOLDEN_PUBLIC_KEY = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
GOLDEN = (
    b'{"v":1,"station_id":"st-006","name":"status","args":{},"seq":1795952566186,'
    b'"issued_at":"2026-11-29T13:40:00Z","expires_at":"2026-11-29T13:45:00Z",'
    b'"signature":"6C9hoR5wBsFCTi3WkggeCkzp6MvW-9690mStC-OZi8TMqjJsZhVEOo5S6fzzT2WSDON0rUsOgbtkLMM5u_2aDw"}'
)
AT = datetime(2026, 11, 29, 13, 40, tzinfo=UTC)


def _command(**fields: object) -> StationCommand:
    values: dict[str, object] = {
        "station_id": "st-006",
        "name": "status",
        "seq": 1795952566186,
        "issued_at": AT,
        "expires_at": AT + timedelta(minutes=5),
    }
    return StationCommand(**(values | fields))  # type: ignore[arg-type]


def test_the_golden_command_parses_verifies_and_is_reproduced_byte_for_byte() -> None:
    command = StationCommand.parse(GOLDEN)
    verify(command, read_public_key(GOLDEN_PUBLIC_KEY), "command")
    assert command.signed_bytes() == (
        b"bikeguard-command/1\nst-006\nstatus\n1795952566186\n"
        b"2026-11-29T13:40:00.000000+00:00\n2026-11-29T13:45:00.000000+00:00\n{}"
    )
    # Ed25519 signatures are deterministic: the same command and key give the same bytes.
    assert sign(_command(), read_signing_key(GOLDEN_SIGNING_KEY)).to_json() == GOLDEN


@pytest.mark.parametrize(
    "change",
    [
        {"station_id": "st-007"},
        {"name": "resend"},
        {"seq": 1795952566187},
        {"issued_at": AT - timedelta(seconds=1)},
        {"expires_at": AT + timedelta(minutes=6)},
        {"args": {"x": "1"}},
    ],
)
def test_any_changed_field_breaks_the_signature(change: dict[str, object]) -> None:
    signed = StationCommand.parse(GOLDEN)
    altered = signed.model_copy(update=change)
    with pytest.raises(SignatureError, match="command's signature is not the backend's"):
        verify(altered, read_public_key(GOLDEN_PUBLIC_KEY), "command")


def test_a_hot_list_signature_is_never_a_command_signature() -> None:
    # One key signs both kinds: the kind at the head of the signed bytes keeps them apart.
    key = Ed25519PrivateKey.generate()
    hotlist = Hotlist(version=1, issued_at=AT, tags=[])
    assert not _command().signed_bytes().startswith(b"bikeguard-hotlist")
    assert hotlist.signed_bytes().startswith(b"bikeguard-hotlist/")
    borrowed = _command(signature=sign(hotlist, key).signature)
    with pytest.raises(SignatureError):
        verify(borrowed, key.public_key(), "command")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (GOLDEN.replace(b'"v":1', b'"v":true'), "v"),
        (GOLDEN.replace(b'"seq":1795952566186', b'"seq":0'), "seq"),
        (GOLDEN.replace(b'"seq":1795952566186', b'"seq":9007199254740993'), "seq"),
        (GOLDEN.replace(b"13:45:00Z", b"14:40:01Z"), "expires_at must be after issued_at and at most 3600 s"),
        (GOLDEN.replace(b"13:45:00Z", b"13:40:00Z"), "expires_at must be after issued_at"),
        (GOLDEN.replace(b'"name":"status"', b'"name":"../x"'), "name"),
        (GOLDEN.replace(b'"args":{}', b'"args":{"a":"' + b"x" * 201 + b'"}'), "args"),
        (GOLDEN.replace(b"2026-11-29T13:40:00Z", b"1764423600"), "issued_at"),
    ],
)
def test_a_malformed_command_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason):
        StationCommand.parse(payload)


def test_the_largest_command_the_backend_can_make_fits_the_size_bound() -> None:
    args = {f"a{i:02d}": "x" * 200 for i in range(15)}
    command = sign(_command(args=args), read_signing_key(GOLDEN_SIGNING_KEY))
    assert len(command.to_json()) <= COMMAND_MAX_BYTES
