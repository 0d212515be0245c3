"""The hot list with stolen v2 chips: what issuing one costs the backend and what it weighs on the wire.

For N stolen v2 chips (random keys, encrypted by the vault as `chip_keys` holds them) the bench times what
`backend.hotlist.issue_hotlist` does besides its two small queries: decrypting the keys (`Vault.decrypt_chip_key`),
their eids for the listed windows (`backend.hotlist.eids_of`), signing the list (Ed25519) and its JSON; and prints the
payload's size beside the stations' limit (2 MiB, `BIKEGUARD_GATEWAY_HOTLIST_MAX_BYTES`). The floor, measured in the
same run: the same AES blocks through one encryptor, and one encryptor made per key (the key schedules).

Run: python bench/hotlist_eids.py [--chips 1000] [--windows 16] [--v1 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from backend.hotlist import eid_windows, eids_of
from backend.vault import Vault
from protocol.messages import Hotlist, format_tag
from protocol.signing import generate_signing_key, read_signing_key, sign_hotlist

STATION_MAX_BYTES = 2 * 2**20


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=1000, help="stolen v2 chips")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--v1", type=int, default=1000, help="stolen v1 chips beside them (by tag id)")
    args = parser.parse_args()
    n, w = args.chips, args.windows
    vault = Vault(os.urandom(32).hex(), os.urandom(32).hex())
    raw = os.urandom(16 * n)
    stored = [(0x20000000 + i, vault.encrypt_chip_key(0x20000000 + i, raw[16 * i : 16 * i + 16])) for i in range(n)]
    key = read_signing_key(generate_signing_key())
    now_s = time.time()

    started = time.perf_counter()
    keys = {tag_id: vault.decrypt_chip_key(tag_id, blob) for tag_id, blob in stored}
    decrypted = time.perf_counter()
    eids = eids_of(keys, eid_windows(now_s, w))
    derived = time.perf_counter()
    tags = [format_tag(0x10000000 + i) for i in range(args.v1)]
    message = sign_hotlist(Hotlist(version=1, issued_at=datetime.now(UTC), tags=tags, eids=eids), key)
    signed = time.perf_counter()
    payload = message.to_json()
    done = time.perf_counter()

    t0 = time.perf_counter()
    Cipher(algorithms.AES(raw[:16]), modes.ECB()).encryptor().update(bytes(16 * n * w))
    aes_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(n):
        Cipher(algorithms.AES(raw[16 * i : 16 * i + 16]), modes.ECB()).encryptor()
    schedule_s = time.perf_counter() - t0

    without = sign_hotlist(Hotlist(version=1, issued_at=message.issued_at, tags=tags), key).to_json()
    per_chip = (len(payload) - len(without)) / max(n, 1)
    print(
        f"hot list: {n:,} stolen v2 chips x {w} windows ({n * w:,} eids) beside {args.v1:,} v1 tags, issued in "
        f"{(done - started) * 1000:.1f} ms: keys decrypted {(decrypted - started) * 1000:.1f} ms, eids "
        f"{(derived - decrypted) * 1000:.1f} ms, model + signature {(signed - derived) * 1000:.1f} ms, JSON "
        f"{(done - signed) * 1000:.1f} ms"
    )
    print(
        f"  floor in this run: the {n * w:,} AES blocks through one encryptor {aes_s * 1000:.2f} ms; "
        f"{n:,} encryptors made (key schedules) {schedule_s * 1000:.1f} ms"
    )
    print(
        f"  payload {len(payload):,} bytes ({per_chip:.0f} bytes per stolen v2 chip); stations take up to "
        f"{STATION_MAX_BYTES:,}: room for about {(STATION_MAX_BYTES - len(without)) / max(per_chip, 1):,.0f} stolen "
        f"v2 chips beside these v1 tags"
    )


if __name__ == "__main__":
    main()
