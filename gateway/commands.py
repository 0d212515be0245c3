"""The checks a command from the backend passes before the station acts on it (docs/architecture.md, "Commands to
stations"): small, well formed, signed with the backend's key, for this station, within its lifetime, newer than
the last command taken, and one the station knows."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.messages import COMMAND_MAX_BYTES, COMMAND_NAMES, MessageError, StationCommand
from protocol.signing import SignatureError, verify

RefusalReason = Literal[
    "too_large",
    "invalid",
    "wrong_topic",
    "no_public_key",
    "unsigned",
    "bad_signature",
    "other_station",
    "not_yet_valid",
    "expired",
    "replayed",
    "unknown_command",
]

# A station's clock and the backend's may differ this much: a command issued "later" than that is refused.
CLOCK_SKEW = timedelta(minutes=5)


class CommandRefused(ValueError):
    """A command payload the station does not act on; `reason` is one of a fixed set (a metrics label)."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RefusalReason = reason
        self.detail = detail


def check_command(
    payload: bytes,
    topic_name: str,
    *,
    station_id: str,
    key: Ed25519PublicKey | None,
    last_seq: int,
    now: datetime,
) -> StationCommand:
    """The command in `payload` (received on the topic of command `topic_name`) if the station may act on it;
    CommandRefused otherwise."""
    # Size first, before a byte is parsed: the payload is anyone's who can publish to the broker.
    if len(payload) > COMMAND_MAX_BYTES:
        raise CommandRefused("too_large", f"{len(payload)} bytes, more than {COMMAND_MAX_BYTES}")
    try:
        command: StationCommand = StationCommand.parse(payload)
    except MessageError as exc:
        raise CommandRefused("invalid", exc.reason) from exc
    if command.name != topic_name:
        raise CommandRefused("wrong_topic", f"command {command.name!r} published as {topic_name!r}")
    if key is None:
        raise CommandRefused("no_public_key", "no BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY to check its signature with")
    try:
        verify(command, key, "command")
    except SignatureError as exc:
        raise CommandRefused("unsigned" if not command.signature else "bad_signature", str(exc)) from exc
    # Signed by the backend from here on: what is left is whether it is meant for this station, now, once.
    if command.station_id != station_id:
        raise CommandRefused("other_station", f"for station {command.station_id!r}, not {station_id!r}")
    if command.issued_at > now + CLOCK_SKEW:
        raise CommandRefused("not_yet_valid", f"issued at {command.issued_at.isoformat()}, after {now.isoformat()}")
    if command.expires_at <= now:
        raise CommandRefused("expired", f"expired at {command.expires_at.isoformat()}")
    if command.seq <= last_seq:
        raise CommandRefused("replayed", f"seq {command.seq} is not after the last command taken ({last_seq})")
    if command.name not in COMMAND_NAMES:
        raise CommandRefused("unknown_command", f"{command.name!r} is none of {', '.join(COMMAND_NAMES)}")
    return command
