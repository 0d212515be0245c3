"""v2 chip keys: made and written to the chip at fitting through the programming cable, kept encrypted at rest,
read back decrypted only to compute ephemeral ids (the resolution, and the hot list's for stolen chips), retired with
their chip.

A key goes from `secrets` to the cable and, encrypted by the vault, to `chip_keys`; it is never shown, returned by
the API, logged, exported or audited (tests/backend/test_chip_keys_never_appear.py searches for it). What may be
shown of it is its key check value (three bytes that prove two parties hold the same key without revealing it).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

import psycopg

from backend.vault import CHIP_KEY_BYTES, Vault
from protocol.ids import format_tag
from protocol.programming_cable import (
    ChipRefusedError,
    ErrorCode,
    KeyCheckMismatchError,
    NoReplyError,
    Programmer,
    ProgrammerError,
)

log = logging.getLogger(__name__)

ChipKind = Literal["v1", "v2"]
CHIP_KINDS: tuple[str, ...] = get_args(ChipKind)

# The refusals of the cable, each a code the counter words in its own language (backend.registry.ERROR_CODES).
CableErrorCode = Literal[
    "v2_cable_unset", "v2_cable_silent", "v2_chip_other", "v2_chip_keyed", "v2_chip_refused", "v2_key_check_failed"
]

# Every v2 chip whose key resolves its beacons (retired keys are erased).
ACTIVE_KEYS = "SELECT tag_id, key_ciphertext FROM chip_keys WHERE retired_at IS NULL ORDER BY tag_id"


class CableError(Exception):
    """A v2 chip could not be programmed; `code` says why (CableErrorCode) and `params` the values in the message."""

    def __init__(self, message: str, code: CableErrorCode, params: dict[str, str | int] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.params = params or {}


@dataclass(frozen=True, slots=True)
class ProgrammedChip:
    """A chip that now holds a new key: the key (for the vault only) and the check value the chip read back."""

    tag_id: int
    key: bytes
    key_check: bytes

    def __repr__(self) -> str:
        # The key is never printed, also not by a traceback's locals or a debugger's repr.
        return f"ProgrammedChip(tag_id={format_tag(self.tag_id)}, kcv={self.key_check.hex()})"


def program_chip(port_url: str | None, tag_id: int, *, timeout_s: float = 2.0) -> ProgrammedChip:
    """Make a random key and write it to the blank chip `tag_id` on the programming cable at `port_url`, with the
    clock set to now; the chip's key check value is checked against the key's. Raises CableError (nothing written
    then, or a chip keyed whose key nobody keeps: it cannot be fitted again, the message says so)."""
    tag = format_tag(tag_id)
    if not port_url:
        raise CableError(
            "no programming cable is set up at this counter (BIKEGUARD_COUNTER_PROGRAMMER_URL): a v2 chip cannot be"
            " fitted here",
            "v2_cable_unset",
        )
    try:
        with Programmer(port_url, timeout_s=timeout_s) as cable:
            info = cable.info()
            if info.serial_number != tag_id:
                raise CableError(
                    f"the chip on the cable is {format_tag(info.serial_number)}, not {tag}: put chip {tag} on the"
                    " cable, or type the number printed on the chip that is on it",
                    "v2_chip_other",
                    {"on_cable": format_tag(info.serial_number), "tag_id": tag},
                )
            if info.keyed:
                raise CableError(
                    f"chip {tag} already holds a key: a chip is keyed once, so it cannot be fitted; take a new chip",
                    "v2_chip_keyed",
                    {"tag_id": tag},
                )
            key = secrets.token_bytes(CHIP_KEY_BYTES)
            kcv = cable.write_key(key, time.time())
    except CableError:
        raise
    except NoReplyError as exc:
        raise CableError(
            f"no answer from a chip on the programming cable: is chip {tag} on the cable?", "v2_cable_silent"
        ) from exc
    except KeyCheckMismatchError as exc:
        raise CableError(
            f"chip {tag} did not take the key intact (its check value is wrong): it cannot be fitted; take a new chip",
            "v2_key_check_failed",
            {"tag_id": tag},
        ) from exc
    except ChipRefusedError as exc:
        if exc.code == ErrorCode.ALREADY_KEYED:
            raise CableError(
                f"chip {tag} already holds a key: a chip is keyed once, so it cannot be fitted; take a new chip",
                "v2_chip_keyed",
                {"tag_id": tag},
            ) from exc
        raise CableError(f"chip {tag} refused: {exc}", "v2_chip_refused", {"tag_id": tag, "reason": str(exc)}) from exc
    except (ProgrammerError, OSError) as exc:
        # serial.SerialException is an OSError: a port that is not there, or taken by another program.
        raise CableError(
            f"the programming cable at {port_url} does not work: {exc}", "v2_cable_silent", {"reason": str(exc)}
        ) from exc
    log.info("chip %s programmed (key check value %s)", tag, kcv.hex())
    return ProgrammedChip(tag_id, key, kcv)


async def store_key(conn: psycopg.AsyncConnection[Any], vault: Vault, chip: ProgrammedChip) -> None:
    """Keep the chip's key, encrypted and bound to its tag id, in the caller's transaction."""
    await conn.execute(
        "INSERT INTO chip_keys (tag_id, key_ciphertext, key_check) VALUES (%s, %s, %s)",
        (chip.tag_id, vault.encrypt_chip_key(chip.tag_id, chip.key), chip.key_check),
    )


def _decrypted(vault: Vault, rows: list[tuple[Any, ...]]) -> list[tuple[int, bytes]]:
    return [(int(tag_id), vault.decrypt_chip_key(int(tag_id), bytes(blob))) for tag_id, blob in rows]


def active_v2_keys(conn: psycopg.Connection[Any], vault: Vault) -> list[tuple[int, bytes]]:
    """(tag id, key) of every v2 chip whose key is not retired, decrypted, by tag id: what the resolution of
    ephemeral ids computes its tables from. Raises VaultError when a key does not decrypt."""
    return _decrypted(vault, conn.execute(ACTIVE_KEYS).fetchall())


async def active_v2_keys_async(conn: psycopg.AsyncConnection[Any], vault: Vault) -> list[tuple[int, bytes]]:
    """active_v2_keys on an asynchronous connection."""
    cur = await conn.execute(ACTIVE_KEYS)
    return _decrypted(vault, await cur.fetchall())


async def active_v2_keys_of(
    conn: psycopg.AsyncConnection[Any], vault: Vault, tag_ids: list[int]
) -> list[tuple[int, bytes]]:
    """(tag id, key) of these v2 chips whose key is not retired, decrypted, by tag id: what the hot list computes a
    stolen chip's ephemeral ids from. Raises VaultError when a key does not decrypt."""
    cur = await conn.execute(
        "SELECT tag_id, key_ciphertext FROM chip_keys WHERE retired_at IS NULL AND tag_id = ANY (%s) ORDER BY tag_id",
        (tag_ids,),
    )
    return _decrypted(vault, await cur.fetchall())


__all__ = [
    "ACTIVE_KEYS",
    "CHIP_KINDS",
    "CableError",
    "CableErrorCode",
    "ChipKind",
    "ProgrammedChip",
    "active_v2_keys",
    "active_v2_keys_async",
    "active_v2_keys_of",
    "program_chip",
    "store_key",
]
