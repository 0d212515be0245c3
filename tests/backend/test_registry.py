"""The registry's rules through the API on a real database: one-to-one bindings, the per-owner limit,
life-cycle operations that keep their history, and the database refusing what the API would never send."""

from __future__ import annotations

import re

import psycopg
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from tests import factories
from tests.backend.conftest import Staff


def test_registration_binds_owner_bike_chip_and_issues_a_certificate(staff: Staff) -> None:
    body = factories.registration(plate="hz-12345", frame_number="lzx 2024a0001")
    r = staff.clerk.post("/api/bikes", json=body)
    assert r.status_code == 201, r.text
    done = r.json()
    assert done["bike"]["plate"] == "HZ-12345" and done["bike"]["frame_number"] == "LZX2024A0001"
    assert done["bike"]["tag_id"] == body["tag_id"] and done["bike"]["status"] == "active"
    number = body["owner"]["id_number"]
    assert done["owner"]["id_number_masked"] == "*" * 14 + number[-4:]
    assert done["certificate"]["token"].startswith("BG1.")
    # A generated login, never the mobile number (issue 11, finding 4).
    assert re.fullmatch(r"bg-[a-z2-9]{8}", done["owner_login"]["username"])
    assert len(done["owner_login"]["initial_password"]) >= 10


def test_chip_already_fitted_is_refused_naming_the_bike_that_holds_it(staff: Staff) -> None:
    first = staff.register()
    again = staff.clerk.post("/api/bikes", json=factories.registration(tag_id=first["bike"]["tag_id"]))
    assert again.status_code == 409
    tag, plate = first["bike"]["tag_id"], first["bike"]["plate"]
    assert again.json() == {
        "detail": f"chip {tag} is already fitted to bike {plate}",
        "field": "tag_id",
        "code": "chip_fitted",
        "params": {"tag_id": tag, "plate": plate},
    }


def test_plate_frame_and_motor_numbers_already_registered_are_refused(staff: Staff) -> None:
    first = staff.register()["bike"]
    for field in ("plate", "frame_number", "motor_number"):
        r = staff.clerk.post("/api/bikes", json=factories.registration(**{field: first[field]}))
        assert r.status_code == 409, r.text
        assert r.json()["field"] == field and first[field] in r.json()["detail"]
        assert "Wang" not in r.json()["detail"]  # what holds it is a bike, never a person


def test_refused_registration_leaves_no_owner_behind(staff: Staff) -> None:
    first = staff.register()
    body = factories.registration(tag_id=first["bike"]["tag_id"])
    assert staff.clerk.post("/api/bikes", json=body).status_code == 409
    lookup = staff.clerk.post("/api/owners/lookup", json={"id_number": body["owner"]["id_number"]})
    assert lookup.status_code == 200 and lookup.json() == {"owner": None}


def test_same_resident_id_number_cannot_become_a_second_owner(staff: Staff) -> None:
    first = staff.register()
    id_number = staff.clerk.post("/api/owners/lookup", json={"id_number": first["owner"]["id_number_masked"]})
    assert id_number.status_code == 422  # a masked number is not a valid number
    body = factories.registration()
    body["owner"]["id_number"] = staff.id_number_of(first)
    r = staff.clerk.post("/api/bikes", json=body)
    assert r.status_code == 409 and r.json()["field"] == "id_number"
    assert f"owner #{first['owner']['owner_id']}" in r.json()["detail"]


def test_one_person_may_hold_one_bike_by_default_and_the_refusal_says_why(staff: Staff) -> None:
    first = staff.register()
    r = staff.clerk.post("/api/bikes", json=factories.registration(owner_id=first["owner"]["owner_id"]))
    assert r.status_code == 409
    assert r.json()["detail"] == (
        f"this owner already holds 1 active bike ({first['bike']['plate']}); the limit is 1 per person"
    )


def test_per_owner_limit_is_a_setting(database_url: str) -> None:
    with TestClient(create_app(factories.settings(database_url, max_bikes_per_owner=2), run_ingest=False)) as client:
        staff = Staff(client, database_url)
        first = staff.register()
        owner_id = first["owner"]["owner_id"]
        assert staff.clerk.post("/api/bikes", json=factories.registration(owner_id=owner_id)).status_code == 201
        third = staff.clerk.post("/api/bikes", json=factories.registration(owner_id=owner_id))
        assert third.status_code == 409 and "the limit is 2 per person" in third.json()["detail"]


def test_plate_outside_the_local_pattern_is_refused_at_the_field(staff: Staff) -> None:
    r = staff.clerk.post("/api/bikes", json=factories.registration(plate="ABC"))
    assert r.status_code == 422 and r.json()["field"] == "plate" and "HZ-12345" in r.json()["detail"]


def test_availability_names_what_holds_each_value_while_the_clerk_types(staff: Staff) -> None:
    bike = staff.register()["bike"]
    r = staff.clerk.get(
        "/api/bikes/availability",
        params={"tag_id": bike["tag_id"], "plate": "HZ-99999", "frame_number": bike["frame_number"]},
    )
    assert r.status_code == 200
    assert r.json() == {
        "tag_id": {
            "detail": f"chip {bike['tag_id']} is already fitted to bike {bike['plate']}",
            "code": "chip_fitted",
            "params": {"tag_id": bike["tag_id"], "plate": bike["plate"]},
        },
        "frame_number": {
            "detail": f"frame number {bike['frame_number']} is already registered to bike {bike['plate']}",
            "code": "frame_taken",
            "params": {"value": bike["frame_number"], "plate": bike["plate"]},
        },
    }


def test_refusals_carry_a_stable_code_and_the_values_in_their_message(staff: Staff) -> None:
    bike = staff.register()["bike"]
    r = staff.clerk.post("/api/bikes", json=factories.registration(plate=bike["plate"]))
    assert r.status_code == 409
    assert r.json() == {
        "detail": f"plate {bike['plate']} is already registered to another bike (#{bike['bike_id']})",
        "field": "plate",
        "code": "plate_taken",
        "params": {"plate": bike["plate"], "bike_id": bike["bike_id"]},
    }
    r = staff.clerk.post(f"/api/bikes/{bike['bike_id']}/chip", json={"tag_id": bike["tag_id"]})
    assert r.status_code == 409 and r.json()["code"] == "same_chip" and r.json()["params"] == {"tag_id": bike["tag_id"]}


def test_transfer_needs_the_old_owners_consent_and_keeps_the_history(staff: Staff) -> None:
    first = staff.register()
    bike_id = first["bike"]["bike_id"]
    old = staff.owner_of(first)
    new_owner = factories.owner_body()
    refused = staff.clerk.post(f"/api/bikes/{bike_id}/transfer", json={"new_owner": new_owner})
    assert refused.status_code == 403 and "consent" in refused.json()["detail"]
    wrong = staff.clerk.post(f"/api/bikes/{bike_id}/transfer", json={"new_owner": new_owner, "consent_code": "XXXX"})
    assert wrong.status_code == 403

    code = old.post(f"/api/bikes/{bike_id}/transfer-consent").json()["code"]
    done = staff.clerk.post(f"/api/bikes/{bike_id}/transfer", json={"new_owner": new_owner, "consent_code": code})
    assert done.status_code == 200, done.text
    assert done.json()["owner_login"]["username"].startswith("bg-")
    assert done.json()["certificate"]["certificate_id"] != first["certificate"]["certificate_id"]
    # The consent was used up, and the old owner no longer sees the bike.
    again = staff.clerk.post(
        f"/api/bikes/{bike_id}/transfer", json={"new_owner_id": first["owner"]["owner_id"], "consent_code": code}
    )
    assert again.status_code == 403
    assert old.get(f"/api/bikes/{bike_id}").status_code == 404

    history = staff.clerk.get(f"/api/bikes/{bike_id}/history").json()
    owners = [h for h in history if h["kind"] == "owner"]
    assert len(owners) == 2
    assert owners[0]["valid_to"] is not None and owners[0]["end_reason"] == "transfer"
    assert owners[0]["unbound_by"] == f"clerk:{staff.clerk.username}"
    assert owners[1]["valid_to"] is None and owners[1]["reason"] == "transfer"
    assert owners[1]["bound_by"] == f"clerk:{staff.clerk.username}"
    assert owners[0]["value"].startswith(f"#{first['owner']['owner_id']} ")


def test_transfer_with_the_old_owner_present_checks_their_id_number(staff: Staff) -> None:
    first = staff.register()
    second = staff.register()
    bike_id = first["bike"]["bike_id"]
    body = {"new_owner": factories.owner_body()}
    wrong = staff.clerk.post(
        f"/api/bikes/{bike_id}/transfer", json={**body, "old_owner_id_number": staff.id_number_of(second)}
    )
    assert wrong.status_code == 403 and wrong.json()["field"] == "old_owner_id_number"
    ok = staff.clerk.post(
        f"/api/bikes/{bike_id}/transfer", json={**body, "old_owner_id_number": staff.id_number_of(first)}
    )
    assert ok.status_code == 200, ok.text


def test_transfer_to_an_owner_at_the_limit_is_refused(staff: Staff) -> None:
    first, second = staff.register(), staff.register()
    r = staff.clerk.post(
        f"/api/bikes/{first['bike']['bike_id']}/transfer",
        json={"new_owner_id": second["owner"]["owner_id"], "old_owner_id_number": staff.id_number_of(first)},
    )
    assert r.status_code == 409 and "the limit is 1" in r.json()["detail"]


def test_chip_replacement_retires_the_old_chip_for_good_and_keeps_its_history(staff: Staff) -> None:
    first = staff.register()
    bike_id, old_tag = first["bike"]["bike_id"], first["bike"]["tag_id"]
    new_tag = factories.tag()
    r = staff.clerk.post(f"/api/bikes/{bike_id}/chip", json={"tag_id": new_tag, "reason": "chip damaged"})
    assert r.status_code == 200, r.text
    assert r.json()["tag_id"] == new_tag
    chips = [h for h in staff.clerk.get(f"/api/bikes/{bike_id}/history").json() if h["kind"] == "chip"]
    assert [(c["value"], c["valid_to"] is None) for c in chips] == [(old_tag, False), (new_tag, True)]
    assert chips[0]["end_reason"] == "chip damaged" and chips[1]["reason"] == "chip damaged"
    reuse = staff.clerk.post("/api/bikes", json=factories.registration(tag_id=old_tag))
    assert reuse.status_code == 409 and "was retired" in reuse.json()["detail"]
    # The old certificate is no longer current; the new one is.
    verify = staff.anonymous.get("/api/certificates/verify", params={"token": first["certificate"]["token"]})
    assert verify.json() == {"genuine": True, "current": False}


def test_plate_change_releases_the_old_plate_and_records_both(staff: Staff) -> None:
    first = staff.register()
    bike_id, old_plate = first["bike"]["bike_id"], first["bike"]["plate"]
    r = staff.clerk.post(f"/api/bikes/{bike_id}/plate", json={"plate": "HZ-77777"})
    assert r.status_code == 200 and r.json()["plate"] == "HZ-77777"
    plates = [h["value"] for h in staff.clerk.get(f"/api/bikes/{bike_id}/history").json() if h["kind"] == "plate"]
    assert plates == [old_plate, "HZ-77777"]
    assert staff.register(plate=old_plate)["bike"]["plate"] == old_plate


def test_deregistration_releases_plate_retires_chip_and_voids_the_certificate(staff: Staff) -> None:
    first = staff.register()
    bike = first["bike"]
    r = staff.clerk.post(f"/api/bikes/{bike['bike_id']}/deregister", json={"status": "scrapped", "note": "crushed"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "scrapped" and r.json()["plate"] is None and r.json()["tag_id"] is None
    assert (
        staff.anonymous.get("/api/certificates/verify", params={"token": first["certificate"]["token"]}).json()[
            "current"
        ]
        is False
    )
    again = staff.clerk.post(
        "/api/bikes",
        json=factories.registration(
            owner_id=first["owner"]["owner_id"], plate=bike["plate"], frame_number=factories.serial("FR")
        ),
    )
    assert again.status_code == 201  # plate free, and the owner is under the limit again
    assert staff.clerk.post(f"/api/bikes/{bike['bike_id']}/plate", json={"plate": "HZ-55555"}).status_code == 404


def test_stolen_bike_cannot_change_hands_at_the_counter(staff: Staff) -> None:
    first = staff.register()
    bike_id = first["bike"]["bike_id"]
    assert staff.police.post(f"/api/bikes/{bike_id}/theft", params={"case_number": "C-100"}, json={}).status_code == 201
    r = staff.clerk.post(
        f"/api/bikes/{bike_id}/transfer",
        json={"new_owner": factories.owner_body(), "old_owner_id_number": staff.id_number_of(first)},
    )
    assert r.status_code == 409 and "reported stolen" in r.json()["detail"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("11010519491231002", "18 characters"),
        ("110105194912310021", "check digit"),
        ("11010519491331002X", "not a real date"),
        ("1101051949123100X2", "17 digits"),
    ],
)
def test_invalid_id_numbers_are_refused_with_the_reason(staff: Staff, bad: str, message: str) -> None:
    body = factories.registration()
    body["owner"]["id_number"] = bad
    r = staff.clerk.post("/api/bikes", json=body)
    assert r.status_code == 422
    error = r.json()["detail"][0]
    assert error["loc"][-1] == "id_number" and message in error["msg"]


def test_database_refuses_a_second_current_binding_and_rewriting_history(staff: Staff) -> None:
    bike = staff.register()["bike"]
    with psycopg.connect(staff.database_url) as conn:
        other_owner = factories.owner(conn)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO bike_bindings (bike_id, kind, owner_id, bound_by) VALUES (%s, 'owner', %s, 'x')",
                (bike["bike_id"], other_owner),
            )
    with psycopg.connect(staff.database_url) as conn, pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        conn.execute("UPDATE bike_bindings SET bound_by = 'someone else' WHERE bike_id = %s", (bike["bike_id"],))
    with psycopg.connect(staff.database_url) as conn, pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        conn.execute("DELETE FROM bike_bindings WHERE bike_id = %s", (bike["bike_id"],))
    with psycopg.connect(staff.database_url) as conn:
        factories.bike(conn, 0x7F000001)
    with psycopg.connect(staff.database_url) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE chips SET bike_id = %s WHERE tag_id = %s", (bike["bike_id"], 0x7F000001))


def test_resident_id_number_is_stored_encrypted_with_a_keyed_hash(staff: Staff) -> None:
    first = staff.register()
    number = staff.id_number_of(first)
    with psycopg.connect(staff.database_url) as conn:
        row = conn.execute(
            "SELECT id_number_hash, id_number_enc, row_to_json(o)::text FROM owners o WHERE owner_id = %s",
            (first["owner"]["owner_id"],),
        ).fetchone()
    assert row is not None
    assert number not in row[2] and number.encode() not in bytes(row[1])
    assert bytes(row[0]) == factories.VAULT.lookup_hash(number)
    assert factories.VAULT.decrypt(row[1]) == number
