"""Resident ID numbers at rest: AES-256-GCM encrypted, with a keyed hash (HMAC-SHA256) for exact lookup.

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


class VaultError(Exception):
    """A stored value cannot be decrypted (wrong key, or damaged)."""


def _derive(secret: str, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret.encode())


class Vault:
    """Encrypts, decrypts and hashes resident ID numbers under the settings' keys."""

    def __init__(self, encryption_key: str, lookup_key: str) -> None:
        self._aead = AESGCM(_derive(encryption_key, b"bikeguard id encryption v1"))
        self._lookup = _derive(lookup_key, b"bikeguard id lookup v1")

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

    def lookup_hash(self, id_number: str) -> bytes:
        """The keyed hash an owner is found by (of the normalised ID number)."""
        return hmac.new(self._lookup, id_number.encode(), hashlib.sha256).digest()
