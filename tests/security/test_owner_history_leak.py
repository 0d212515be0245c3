"""Issue 11, finding 4: a new owner reading the previous owner's mobile number in the bike's history.

The attack: after a bike changed hands, its new owner read GET /api/bikes/{id}/history and found the previous
owner's username — their mobile number — in `bound_by` ("owner:139…") of what that owner did (a theft report,
its recovery). Now an owner sees only their own period of the bike's history, everyone else who owned it as
"another owner"; and owner usernames made at the counter are not mobile numbers.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from tests import factories
from tests.backend.conftest import Caller, Staff


def _sold(staff: Staff) -> tuple[dict[str, Any], Caller, dict[str, Any], Caller]:
    """A bike whose first owner reported it stolen and found it, then sold it at the counter to a second owner."""
    first = staff.register()
    seller = staff.owner_of(first)
    bike_id = first["bike"]["bike_id"]
    assert seller.post(f"/api/bikes/{bike_id}/theft", json={"place": "the station"}).status_code == 201
    assert seller.post(f"/api/bikes/{bike_id}/recovered").status_code == 200
    new_owner = factories.owner_body()
    r = staff.clerk.post(
        f"/api/bikes/{bike_id}/transfer",
        json={"new_owner": new_owner, "old_owner_id_number": staff.id_number_of(first)},
    )
    assert r.status_code == 200, r.text
    sold = r.json()
    slip = sold["owner_login"]
    buyer = staff.owner_of({"owner_login": slip})
    return first, seller, {"transfer": sold, "owner": new_owner, "slip": slip}, buyer


def test_a_new_owner_reads_nothing_of_the_previous_owner_in_the_history(staff: Staff) -> None:
    first, seller, second, buyer = _sold(staff)
    bike_id = first["bike"]["bike_id"]
    previous = {seller.username, first["owner"]["mobile"], first["owner"]["name"]}

    r = buyer.get(f"/api/bikes/{bike_id}/history")

    assert r.status_code == 200, r.text
    text = r.text
    for secret in previous:
        assert secret not in text, f"{secret!r} in {text}"
    assert not re.search(r"1[3-9]\d{9}", text), text  # no mobile number of anyone
    rows = r.json()
    owners = [row["value"] for row in rows if row["kind"] == "owner"]
    assert owners == ["another owner", "you"]
    # The previous owner's theft report and its recovery were theirs: not in the new owner's period.
    assert [row for row in rows if row["kind"] == "theft"] == []
    # The bike's plate and chip, bound before the sale and still current, are part of the new owner's bike.
    assert {row["kind"] for row in rows} == {"owner", "plate", "chip"}
    # The counter still sees the whole history, owners masked.
    full = staff.clerk.get(f"/api/bikes/{bike_id}/history").json()
    assert [row["kind"] for row in full].count("theft") == 1


def test_an_owner_is_named_you_in_what_they_did_and_others_are_not_named(staff: Staff) -> None:
    first = staff.register()
    me = staff.owner_of(first)
    bike_id = first["bike"]["bike_id"]
    assert me.post(f"/api/bikes/{bike_id}/theft", json={}).status_code == 201

    rows = me.get(f"/api/bikes/{bike_id}/history").json()

    (theft,) = [row for row in rows if row["kind"] == "theft"]
    assert theft["bound_by"] == "you"
    assert me.username not in str(rows)


def test_owner_usernames_made_at_the_counter_are_not_mobile_numbers(staff: Staff) -> None:
    registered = staff.register()
    transferred = _sold(staff)[2]

    for owner, slip in ((registered["owner"], registered["owner_login"]), (transferred["owner"], transferred["slip"])):
        assert owner["mobile"] not in slip["username"]
        assert not re.fullmatch(r"\+?\d{7,}", slip["username"]), slip["username"]
    # A clerk cannot type a mobile number as the login either.
    body = factories.registration()
    body["owner"]["login"] = body["owner"]["mobile"]
    r = staff.clerk.post("/api/bikes", json=body)
    assert r.status_code == 422 and "mobile" in r.text
    with psycopg.connect(staff.database_url) as conn:
        usernames = [row[0] for row in conn.execute("SELECT username FROM accounts WHERE role = 'owner'")]
    assert all(not re.fullmatch(r"\d+", u) for u in usernames), usernames
