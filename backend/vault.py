"""Secrets at rest: resident ID numbers (AES-256-GCM, with a keyed hash, HMAC-SHA256, for exact lookup) and v2 chip
keys (AES-256-GCM under a subkey of their own, bound to their chip's tag id).

Keys come from the settings as strings of any length and are stretched with HKDF, so an operator can
paste any long random string. The lookup hash is keyed, so a stolen table cannot be searched by
hashing every possible ID number.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backend.settings import BackendSettings

_VERSION = b"\x01"
_AAD = b"bikeguard:owner:id_number"
_CHIP_KEY_AAD = b"bikeguard:chip_key:"
CHIP_KEY_BYTES = 16


class VaultError(Exception):
    """A stored value cannot be decrypted (wrong key, or damaged)."""


def _derive(secret: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret.encode())


def _chip_aad(tag_id: int) -> bytes:
    return _CHIP_KEY_AAD + tag_id.to_bytes(4, "big")


class Vault:
    """Encrypts, decrypts and hashes resident ID numbers, and encrypts chip keys, under the settings' keys."""

    def __init__(self, encryption_key: str, lookup_key: str) -> None:
        self._aead = AESGCM(_derive(encryption_key, b"bikeguard id encryption v1"))
        self._lookup = _derive(lookup_key, b"bikeguard id lookup v1")
        # Chip keys under a subkey of their own: a value of one kind never decrypts as the other.
        self._chip_aead = AESGCM(_derive(encryption_key, b"bikeguard chip key encryption v1"))

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> Vault:
        """The vault for these settings' keys."""
        return cls(settings.id_encryption_key.get_secret_value(), settings.id_lookup_key.get_secret_value())

    def encrypt(self, id_number: str) -> bytes:
        """version || nonce || ciphertext+tag."""
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, id_number.encode(), _AAD)

    def decrypt(self, blob: bytes) -> str:
        """The ID number in a value made by encrypt; raises VaultError."""
        blob = bytes(blob)
        if blob[:1] != _VERSION or len(blob) < 1 + 12 + 16:
            raise VaultError("not an encrypted ID number")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], _AAD).decode()
        except InvalidTag as exc:
            raise VaultError("the ID number cannot be decrypted with the configured key") from exc

    def encrypt_chip_key(self, tag_id: int, key: bytes) -> bytes:
        """version || nonce || ciphertext+tag of a v2 chip's key, bound to its tag id (the associated data)."""
        if len(key) != CHIP_KEY_BYTES:
            raise VaultError(f"a chip key is {CHIP_KEY_BYTES} bytes, not {len(key)}")
        nonce = os.urandom(12)
        return _VERSION + nonce + self._chip_aead.encrypt(nonce, key, _chip_aad(tag_id))

    def decrypt_chip_key(self, tag_id: int, blob: bytes) -> bytes:
        """The key in a value made by encrypt_chip_key for this tag id; raises VaultError (also for another chip's)."""
        blob = bytes(blob)
        if blob[:1] != _VERSION or len(blob) != 1 + 12 + CHIP_KEY_BYTES + 16:
            raise VaultError(f"not an encrypted chip key (chip {tag_id:08X})")
        try:
            return self._chip_aead.decrypt(blob[1:13], blob[13:], _chip_aad(tag_id))
        except InvalidTag as exc:
            raise VaultError(
                f"the key of chip {tag_id:08X} cannot be decrypted with the configured key (or is another chip's)"
            ) from exc

    def lookup_hash(self, id_number: str) -> bytes:
        """The keyed hash an owner is found by (of the normalised ID number)."""
        return hmac.new(self._lookup, id_number.encode(), hashlib.sha256).digest()
