"""Issue 11 #5: a clerk recovers a full resident ID number from its mask by looking up candidates.

The mask used to show 8 of 18 characters (`3301**********0029`): the birth date and two area digits were all that
was hidden, so a few thousand look-ups through /api/owners/lookup found the number, and only the hit was audited.
"""

from __future__ import annotations

from datetime import date, timedelta

import psycopg

from backend.identity import check_character
from tests import factories
from tests.backend.conftest import Staff, sign_in

# The counter's rate: look-ups per account per hour (the setting's default).
LOOKUPS_PER_HOUR = 60


def _candidates(visible_head: str, visible_tail: str, true_number: str) -> list[str]:
    """ID numbers consistent with the old mask, the true one among them after many misses (what the attack tried)."""
    found: list[str] = []
    born = date(1990, 1, 1)
    while len(found) < 3 * LOOKUPS_PER_HOUR:
        for area in range(100):
            first17 = f"{visible_head}{area:02d}{born:%Y%m%d}{visible_tail[:3]}"
            if check_character(first17) == visible_tail[3] and first17 + visible_tail[3] != true_number:
                found.append(first17 + visible_tail[3])
        born += timedelta(days=1)
    return found[: 2 * LOOKUPS_PER_HOUR] + [true_number]


def _lookups_audited(database_url: str, username: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM audit_log WHERE actor = %s AND action = 'owner.lookup'", (username,)
        ).fetchone()
    return int(row[0])  # type: ignore[index]


def test_the_mask_shows_the_last_four_characters_only(staff: Staff) -> None:
    done = staff.register()
    full = staff.id_number_of(done)
    masked = staff.clerk.get(f"/api/owners/{done['owner']['owner_id']}").json()["id_number_masked"]
    assert masked == "*" * 14 + full[-4:]


def test_enumerating_candidates_is_cut_off_and_every_miss_is_audited(staff: Staff) -> None:
    full = staff.id_number_of(staff.register(owner=factories.owner_body(id_number=factories.id_number(424_242))))
    statuses: list[int] = []
    hit = False
    for candidate in _candidates(full[:4], full[-4:], full):
        r = staff.clerk.post("/api/owners/lookup", json={"id_number": candidate})
        statuses.append(r.status_code)
        hit = hit or (r.status_code == 200 and r.json()["owner"] is not None)
    assert not hit, "the enumeration found the number"
    assert statuses[:LOOKUPS_PER_HOUR] == [200] * LOOKUPS_PER_HOUR
    assert set(statuses[LOOKUPS_PER_HOUR:]) == {429}
    r = staff.clerk.post("/api/owners/lookup", json={"id_number": full})
    assert r.status_code == 429 and "look-ups" in r.json()["detail"] and int(r.headers["Retry-After"]) > 0
    # Every look-up that was answered is in the audit log, the misses too.
    assert _lookups_audited(staff.database_url, staff.clerk.username) == LOOKUPS_PER_HOUR
    # The limit is per account: another clerk at the counter is not held up.
    with psycopg.connect(staff.database_url) as conn:
        other = factories.account(conn, "clerk")
    r = sign_in(staff.client, other).post("/api/owners/lookup", json={"id_number": full})
    assert r.status_code == 200 and r.json()["owner"] is not None
