"""The checks a command passes before a station acts on it (gateway/commands.py), and the seq kept in the spool."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.commands import CommandRefused, check_command
from gateway.spool import Spool
from protocol.messages import StationCommand
from protocol.signing import sign

KEY = Ed25519PrivateKey.generate()
NOW = datetime(2026, 11, 29, 13, 40, tzinfo=UTC)


def _signed(
    station_id: str = "st-1", name: str = "status", seq: int = 10, issued_at: datetime = NOW, ttl_s: float = 300
) -> bytes:
    command = StationCommand(
        station_id=station_id,
        name=name,
        seq=seq,
        issued_at=issued_at,
        expires_at=issued_at + timedelta(seconds=ttl_s),
    )
    return sign(command, KEY).to_json()


def _check(payload: bytes, *, topic_name: str = "status", last_seq: int = 5, key: bool = True) -> StationCommand:
    return check_command(
        payload, topic_name, station_id="st-1", key=KEY.public_key() if key else None, last_seq=last_seq, now=NOW
    )


def test_a_signed_fresh_command_for_this_station_is_taken() -> None:
    command = _check(_signed())
    assert (command.name, command.seq) == ("status", 10)


@pytest.mark.parametrize(
    ("payload", "kwargs", "reason"),
    [
        (b"x" * 5000, {}, "too_large"),
        (b"{}", {}, "invalid"),
        (_signed().replace(b'"seq":10', b'"seq":' + b"9" * 400), {}, "invalid"),
        (_signed(name="resend"), {}, "wrong_topic"),
        (_signed(), {"key": False}, "no_public_key"),
        (
            StationCommand.parse(_signed()).model_copy(update={"signature": ""}).to_json(),
            {},
            "unsigned",
        ),
        (
            sign(StationCommand.parse(_signed()), Ed25519PrivateKey.generate()).to_json(),
            {},
            "bad_signature",
        ),
        (_signed(station_id="st-2"), {}, "other_station"),
        (_signed(issued_at=NOW + timedelta(minutes=6)), {}, "not_yet_valid"),
        (_signed(issued_at=NOW - timedelta(minutes=10), ttl_s=600), {}, "expired"),
        (_signed(seq=5), {}, "replayed"),
        (_signed(seq=4), {}, "replayed"),
        (_signed(name="reboot"), {"topic_name": "reboot"}, "unknown_command"),
    ],
)
def test_each_bad_command_is_refused_with_its_reason(payload: bytes, kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(CommandRefused) as refused:
        _check(payload, **kwargs)  # type: ignore[arg-type]
    assert refused.value.reason == reason


def test_a_command_within_the_clock_skew_is_taken() -> None:
    # The backend's clock a little ahead of the station's, or a command that waited in the broker a while.
    assert _check(_signed(issued_at=NOW + timedelta(minutes=4))).seq == 10
    assert _check(_signed(issued_at=NOW - timedelta(seconds=299))).seq == 10


@given(st.binary(max_size=600))
def test_arbitrary_bytes_are_refused_never_a_crash(payload: bytes) -> None:
    with pytest.raises(CommandRefused):
        _check(payload)


FIELDS = st.sampled_from(["v", "station_id", "name", "args", "seq", "issued_at", "expires_at", "signature"])
INTEGERS = st.integers(-(2**63), 2**63 - 1)  # what orjson writes; a longer number is in the byte-level cases
VALUES = st.none() | st.booleans() | INTEGERS | st.text(max_size=30) | st.lists(INTEGERS, max_size=3)


@given(st.dictionaries(FIELDS, VALUES))
def test_arbitrary_json_objects_are_refused_never_a_crash(fields: dict[str, object]) -> None:
    with pytest.raises(CommandRefused):
        _check(orjson.dumps(fields))


def test_the_last_command_seq_survives_a_restart_and_never_goes_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    assert spool.load_command_seq() == 0
    spool.save_command_seq(12)
    spool.save_command_seq(11)
    spool.close()
    spool = Spool(tmp_path / "s.spool")
    assert spool.load_command_seq() == 12
    spool.close()
