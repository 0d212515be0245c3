"""Issue 15, item 1: where my bike is — the last station that saw it, its trail of a day on the map and the day's
trip summary, only within the owner's own period of ownership (never a passage from before the bike was theirs)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from tests import factories
from tests.backend.conftest import Caller, Staff

# Three stations about 1.1 km apart along a street.
STATIONS = {"st-east": (30.270, 120.170), "st-mid": (30.270, 120.1585), "st-west": (30.270, 120.147)}


def _passage(
    database_url: str,
    station_id: str,
    tag_hex: str,
    seconds_ago: float = 0.0,
    dwell_s: float = 60,
    now: datetime | None = None,
) -> None:
    """A passage of the chip at a station, stamped by the database's clock (so after anything committed before), or
    from `now` (several passages from one moment: their gaps are then exactly as asked, however slow the inserts)."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO sightings (first_seen_at, last_seen_at, station_id, tag_id, beacons, peak_rssi_dbm, antenna,"
            " flags, batch_seq) VALUES (coalesce(%s, clock_timestamp()) - make_interval(secs => %s),"
            " coalesce(%s, clock_timestamp()) - make_interval(secs => %s), %s, %s, 3, -60, 0, 0, 1)",
            (now, seconds_ago, now, seconds_ago - dwell_s, station_id, int(tag_hex, 16)),
        )


def _stations(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for station_id, (lat, lon) in STATIONS.items():
            factories.station(conn, station_id, lat, lon)


def _sold_after_passages(staff: Staff) -> tuple[dict[str, Any], Caller, Caller]:
    """A bike seen at st-east and st-mid by its first owner, sold at the counter, then seen at st-west."""
    _stations(staff.database_url)
    first = staff.register()
    seller = staff.owner_of(first)
    tag = first["bike"]["tag_id"]
    _passage(staff.database_url, "st-east", tag, seconds_ago=0.5, dwell_s=0.2)
    _passage(staff.database_url, "st-mid", tag, seconds_ago=0.2, dwell_s=0.1)
    r = staff.clerk.post(
        f"/api/bikes/{first['bike']['bike_id']}/transfer",
        json={"new_owner": factories.owner_body(), "old_owner_id_number": staff.id_number_of(first)},
    )
    assert r.status_code == 200, r.text
    buyer = staff.owner_of({"owner_login": r.json()["owner_login"]})
    _passage(staff.database_url, "st-west", tag, seconds_ago=0.0, dwell_s=0.0)
    return first, seller, buyer


def _map_summary(html: str) -> dict[str, Any]:
    """The trajectory summary the map page draws (the Replay's load(...) argument)."""
    found = re.search(r"\.load\((\{.*?\}), \{", html, re.S)
    assert found, html[:2000]
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def test_an_owner_sees_where_the_bike_was_last_seen(staff: Staff) -> None:
    _stations(staff.database_url)
    done = staff.register()
    owner = staff.owner_of(done)
    [bike] = owner.get("/api/bikes").json()
    assert bike["last_seen"] is None  # not seen yet
    _passage(staff.database_url, "st-east", done["bike"]["tag_id"], seconds_ago=0.0, dwell_s=0.0)

    [bike] = owner.get("/api/bikes").json()

    assert bike["last_seen"]["station_id"] == "st-east"
    assert bike["last_seen"]["station_name"] == "Station st-east"
    seen_at = datetime.fromisoformat(bike["last_seen"]["seen_at"])
    assert abs(seen_at - datetime.now(UTC)) < timedelta(minutes=1)
    # Where it is is the owner's: the counter's and the police's lists carry no last_seen of a bike not stolen.
    [found] = staff.police.get("/api/bikes", params={"plate": bike["plate"]}).json()
    assert found["last_seen"] is None


def test_after_a_sale_the_new_owner_sees_no_passage_from_before_it_was_theirs(staff: Staff) -> None:
    first, seller, buyer = _sold_after_passages(staff)
    bike_id = first["bike"]["bike_id"]

    [bike] = buyer.get("/api/bikes").json()
    assert bike["last_seen"]["station_id"] == "st-west"
    summary = buyer.get(f"/api/bikes/{bike_id}/trajectory/summary").json()
    assert [s["station_id"] for s in summary["stops"]] == ["st-west"]
    assert summary["totals"] == {"distance_m": 0.0, "moving_s": 0.0, "parked_s": 0.0, "stops": 1}
    page = buyer.get(f"/portal/bikes/{bike_id}/map?lang=en")
    assert page.status_code == 200, page.text
    assert [s["station_id"] for s in _map_summary(page.text)["stops"]] == ["st-west"]
    assert "st-east" not in page.text and "st-mid" not in page.text
    # The seller no longer holds the bike: its map is theirs no more, exactly as a bike that does not exist.
    assert seller.get(f"/portal/bikes/{bike_id}/map").status_code == 404
    assert seller.get("/api/bikes").json() == []


def test_an_owner_s_day_has_its_trip_summary(staff: Staff) -> None:
    _stations(staff.database_url)
    done = staff.register()
    owner = staff.owner_of(done)
    tag, bike_id = done["bike"]["tag_id"], done["bike"]["bike_id"]
    # Registered a moment ago: the day's ride is stamped from now on (the window asked for reaches ahead).
    with psycopg.connect(staff.database_url) as conn:
        now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    _passage(staff.database_url, "st-east", tag, seconds_ago=-60, dwell_s=600, now=now)  # parked 10 min
    _passage(staff.database_url, "st-mid", tag, seconds_ago=-960, dwell_s=60, now=now)  # 5 min after leaving st-east
    _passage(staff.database_url, "st-west", tag, seconds_ago=-1260, dwell_s=1200, now=now)  # 4 min on, parked 20 min
    until = (datetime.now(UTC) + timedelta(hours=2)).isoformat()

    totals = owner.get(f"/api/bikes/{bike_id}/trajectory/summary", params={"until": until}).json()["totals"]

    assert totals["stops"] == 3
    assert 2100 < totals["distance_m"] < 2300
    assert totals["moving_s"] == 5 * 60 + 4 * 60
    assert totals["parked_s"] == 600 + 60 + 1200


def test_another_owner_cannot_open_the_map_of_a_bike_by_guessing_its_id(staff: Staff) -> None:
    mine, theirs = staff.register(), staff.register()
    me = staff.owner_of(mine)
    assert me.get(f"/portal/bikes/{theirs['bike']['bike_id']}/map").status_code == 404
    assert me.get(f"/portal/bikes/{mine['bike']['bike_id']}/map").status_code == 200
    # And staff are not owners: the page is the owner's only.
    assert staff.police.get(f"/portal/bikes/{mine['bike']['bike_id']}/map").status_code == 403
