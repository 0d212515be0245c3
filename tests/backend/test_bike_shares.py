"""Issue 15, item 3: an owner lets a family member see where the bike is through a link that expires and can be
withdrawn — never the owner's data, never a passage from before the bike was the owner's, and never once the bike
is sold."""

from __future__ import annotations

import re
import secrets

import psycopg

from tests import factories
from tests.backend.conftest import Staff
from tests.backend.test_owner_where import _map_summary, _passage, _sold_after_passages, _stations


def _token(url: str) -> str:
    found = re.search(r"[^/]/shared/([A-Za-z0-9_-]+)$", url)
    assert found, url
    return found.group(1)


def test_a_family_member_sees_where_the_bike_is_and_nothing_of_its_owner(staff: Staff) -> None:
    _stations(staff.database_url)
    done = staff.register()
    owner = staff.owner_of(done)
    bike_id = done["bike"]["bike_id"]
    _passage(staff.database_url, "st-mid", done["bike"]["tag_id"])

    r = owner.post(f"/api/bikes/{bike_id}/shares", json={"days": 7, "label": "for my daughter"})

    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    made = r.json()
    assert made["label"] == "for my daughter" and made["revoked_at"] is None
    page = staff.anonymous.get(f"/shared/{_token(made['url'])}?lang=en")
    assert page.status_code == 200, page.text
    assert done["bike"]["plate"] in page.text and "Station st-mid" in page.text
    for secret in (done["owner"]["name"], done["owner"]["mobile"], staff.id_number_of(done), owner.username):
        assert secret not in page.text
    shown = staff.anonymous.get(f"/shared/{_token(made['url'])}/map")
    assert shown.status_code == 200
    assert [s["station_id"] for s in _map_summary(shown.text)["stops"]] == ["st-mid"]
    # The owner's list names the link's purpose and dates, never the link again.
    [listed] = owner.get(f"/api/bikes/{bike_id}/shares").json()
    assert listed["share_id"] == made["share_id"] and "url" not in listed
    assert _token(made["url"]) not in str(owner.get(f"/api/bikes/{bike_id}/shares").json())
    with psycopg.connect(staff.database_url) as conn:
        actions = [
            row[0] for row in conn.execute("SELECT action FROM audit_log WHERE subject = %s", (f"bike:{bike_id}",))
        ]
    assert "bike.share" in actions


def test_a_withdrawn_or_expired_link_shows_nothing(staff: Staff) -> None:
    done = staff.register()
    owner = staff.owner_of(done)
    bike_id = done["bike"]["bike_id"]
    withdrawn = owner.post(f"/api/bikes/{bike_id}/shares", json={"days": 1}).json()
    expired = owner.post(f"/api/bikes/{bike_id}/shares", json={"days": 1}).json()

    assert owner.request("DELETE", f"/api/bikes/{bike_id}/shares/{withdrawn['share_id']}").status_code == 204
    with psycopg.connect(staff.database_url) as conn:
        conn.execute(
            "UPDATE bike_shares SET created_at = now() - interval '2 days', expires_at = now() - interval '1 second'"
            " WHERE share_id = %s",
            (expired["share_id"],),
        )

    for made in (withdrawn, expired):
        for path in ("", "/map"):
            r = staff.anonymous.get(f"/shared/{_token(made['url'])}{path}?lang=en")
            assert r.status_code == 404, r.text
            assert done["bike"]["plate"] not in r.text
    assert "no longer works" in staff.anonymous.get(f"/shared/{_token(withdrawn['url'])}?lang=en").text
    states = {s["share_id"]: s["revoked_at"] for s in owner.get(f"/api/bikes/{bike_id}/shares").json()}
    assert states[withdrawn["share_id"]] is not None and states[expired["share_id"]] is None


def test_a_link_ends_when_the_bike_is_sold(staff: Staff) -> None:
    first = staff.register()
    seller = staff.owner_of(first)
    made = seller.post(f"/api/bikes/{first['bike']['bike_id']}/shares", json={"days": 30}).json()
    assert staff.anonymous.get(f"/shared/{_token(made['url'])}").status_code == 200
    r = staff.clerk.post(
        f"/api/bikes/{first['bike']['bike_id']}/transfer",
        json={"new_owner": factories.owner_body(), "old_owner_id_number": staff.id_number_of(first)},
    )
    assert r.status_code == 200, r.text
    # The seller's link would follow the buyer's bike: it no longer opens.
    assert staff.anonymous.get(f"/shared/{_token(made['url'])}").status_code == 404
    assert staff.anonymous.get(f"/shared/{_token(made['url'])}/map").status_code == 404


def test_a_shared_map_shows_nothing_from_before_the_sharing_owner_s_time(staff: Staff) -> None:
    first, _seller, buyer = _sold_after_passages(staff)
    made = buyer.post(f"/api/bikes/{first['bike']['bike_id']}/shares", json={"days": 1}).json()
    shown = staff.anonymous.get(f"/shared/{_token(made['url'])}/map")
    assert [s["station_id"] for s in _map_summary(shown.text)["stops"]] == ["st-west"]
    assert "Station st-west" in staff.anonymous.get(f"/shared/{_token(made['url'])}?lang=en").text


def test_links_cannot_be_guessed_made_or_withdrawn_by_anyone_but_the_owner(staff: Staff) -> None:
    mine, theirs = staff.register(), staff.register()
    me, them = staff.owner_of(mine), staff.owner_of(theirs)
    their_bike = theirs["bike"]["bike_id"]
    their_link = them.post(f"/api/bikes/{their_bike}/shares", json={"days": 7}).json()

    assert staff.anonymous.get(f"/shared/{secrets.token_urlsafe(24)}").status_code == 404
    assert staff.anonymous.get("/shared/short").status_code in (404, 422)
    assert me.post(f"/api/bikes/{their_bike}/shares", json={"days": 7}).status_code == 404
    assert me.get(f"/api/bikes/{their_bike}/shares").status_code == 404
    assert me.request("DELETE", f"/api/bikes/{their_bike}/shares/{their_link['share_id']}").status_code == 404
    # Another owner's share id under my own bike is no share of mine either.
    mine_id = mine["bike"]["bike_id"]
    assert me.request("DELETE", f"/api/bikes/{mine_id}/shares/{their_link['share_id']}").status_code == 404
    assert staff.anonymous.get(f"/shared/{_token(their_link['url'])}").status_code == 200  # still theirs, still open
    for staff_member in (staff.police, staff.clerk, staff.installer):
        assert staff_member.post(f"/api/bikes/{their_bike}/shares", json={"days": 7}).status_code == 403
    assert staff.anonymous.post(f"/api/bikes/{their_bike}/shares", json={"days": 7}).status_code == 401


def test_a_link_lasts_one_to_thirty_days_and_a_bike_has_few_open_links(staff: Staff) -> None:
    done = staff.register()
    owner = staff.owner_of(done)
    bike_id = done["bike"]["bike_id"]
    for days in (0, 31):
        assert owner.post(f"/api/bikes/{bike_id}/shares", json={"days": days}).status_code == 422
    for _ in range(10):
        assert owner.post(f"/api/bikes/{bike_id}/shares", json={"days": 1}).status_code == 201
    r = owner.post(f"/api/bikes/{bike_id}/shares", json={"days": 1})
    assert r.status_code == 409 and "withdraw one" in r.text
