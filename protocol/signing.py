"""The backend's signature on what it sends to stations (the hot list, commands): Ed25519, keys as base64url text.

The backend holds the signing key (BIKEGUARD_HOTLIST_SIGNING_KEY); each station is given the public half with its
credentials (BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY), so a list or a command from anyone else who can publish to the
broker is refused by the station. One key signs both: each message's signed bytes start with its own kind
(`bikeguard-hotlist/…`, `bikeguard-command/…`), so a signature of one is never valid for the other.
"""

from __future__ import annotations

import base64
import binascii
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from protocol.messages import Hotlist, StationCommand

__all__ = [
    "SignatureError",
    "SigningKeyError",
    "generate_signing_key",
    "public_key_of",
    "read_public_key",
    "read_signing_key",
    "sign",
    "sign_hotlist",
    "verify",
    "verify_hotlist",
]

_KEY_BYTES = 32


class SigningKeyError(ValueError):
    """A key setting that is not a base64url-encoded 32-byte Ed25519 key."""


class SignatureError(ValueError):
    """A message whose signature is missing or was not made by the backend's key."""


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(text: str, what: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SigningKeyError(f"the {what} is not base64url text: {exc}") from exc
    if len(raw) != _KEY_BYTES:
        raise SigningKeyError(f"the {what} must be {_KEY_BYTES} bytes (43 base64url characters), not {len(raw)}")
    return raw


def generate_signing_key() -> str:
    """A fresh random signing key, as the text BIKEGUARD_HOTLIST_SIGNING_KEY takes."""
    raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return _encode(raw)


def read_signing_key(text: str) -> Ed25519PrivateKey:
    """The signing key from its text; SigningKeyError when it is not one."""
    return Ed25519PrivateKey.from_private_bytes(_decode(text, "hot-list signing key"))


def read_public_key(text: str) -> Ed25519PublicKey:
    """A station's public key from its text; SigningKeyError when it is not one."""
    return Ed25519PublicKey.from_public_bytes(_decode(text, "hot-list public key"))


def public_key_of(signing_key: str) -> str:
    """The public half of a signing key, as the text BIKEGUARD_GATEWAY_HOTLIST_PUBLIC_KEY takes."""
    return _encode(read_signing_key(signing_key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


# The messages the backend signs: each has `signed_bytes()` and a `signature` field.
M = TypeVar("M", Hotlist, StationCommand)


def sign(message: M, key: Ed25519PrivateKey) -> M:
    """The same message with the backend's signature."""
    return message.model_copy(update={"signature": _encode(key.sign(message.signed_bytes()))})


def verify(message: Hotlist | StationCommand, key: Ed25519PublicKey, what: str) -> None:
    """Raise SignatureError unless `message` (`what` it is, for the error) was signed with the private half of
    `key`."""
    if not message.signature:
        raise SignatureError(f"the {what} is not signed")
    try:
        signature = base64.urlsafe_b64decode(message.signature + "=" * (-len(message.signature) % 4))
        key.verify(signature, message.signed_bytes())
    except (binascii.Error, InvalidSignature) as exc:
        raise SignatureError(f"the {what}'s signature is not the backend's") from exc


def sign_hotlist(message: Hotlist, key: Ed25519PrivateKey) -> Hotlist:
    """The same list with its signature."""
    return sign(message, key)


def verify_hotlist(message: Hotlist, key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless the list was signed with the private half of `key`."""
    verify(message, key, "hot list")
