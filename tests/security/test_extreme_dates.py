"""Issue 11, finding 15: times at the ends of the calendar in a query (year 1, year 9999 west of UTC) made the
backend raise OverflowError (a 500 that reset the keep-alive connection). Every query time is bounded in
validation and refused with a 422 that says the range."""

from __future__ import annotations

from typing import Any

import pytest

from tests.backend.conftest import Caller, Staff

EXTREMES = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T23:59:59+00:00",
    "9999-12-31T23:59:59-12:00",
    "9999-12-31T23:59:59Z",
    "1000-06-01T00:00:00+00:00",
)


@pytest.fixture
def owner_bike(staff: Staff) -> tuple[Caller, int]:
    """A registered bike and its owner, signed in: the owner may read the bike's trajectory in every form."""
    done = staff.register()
    return staff.owner_of(done), int(done["bike"]["bike_id"])


def _refused(r: Any) -> None:
    assert r.status_code == 422, f"{r.request.url}: {r.status_code} {r.text}"
    assert "between" in r.text and "UTC" in r.text, r.text  # the message says which times are accepted


@pytest.mark.parametrize("view", ["trajectory", "trajectory/summary", "trajectory.csv", "trajectory.gpx"])
@pytest.mark.parametrize("bound", ["since", "until"])
@pytest.mark.parametrize("at", EXTREMES)
def test_extreme_time_in_a_trajectory_query_is_a_422(
    owner_bike: tuple[Caller, int], view: str, bound: str, at: str
) -> None:
    owner, bike_id = owner_bike
    _refused(owner.get(f"/api/bikes/{bike_id}/{view}", params={bound: at}))


@pytest.mark.parametrize("bound", ["since", "until"])
@pytest.mark.parametrize("at", EXTREMES)
def test_extreme_time_in_a_sightings_query_is_a_422(staff: Staff, bound: str, at: str) -> None:
    params = {"station_id": "st-any", "case_number": "C-2026-1", bound: at}
    _refused(staff.police.get("/api/sightings", params=params))


@pytest.mark.parametrize("at", EXTREMES)
def test_extreme_time_in_an_audit_query_is_a_422(staff: Staff, at: str) -> None:
    _refused(staff.admin.get("/api/audit", params={"since": at}))


def test_ordinary_times_still_answer(owner_bike: tuple[Caller, int]) -> None:
    owner, bike_id = owner_bike
    window = {"since": "2026-01-01T00:00:00+08:00", "until": "2026-01-02T00:00:00Z"}
    for view in ("trajectory", "trajectory.csv", "trajectory.gpx"):
        r = owner.get(f"/api/bikes/{bike_id}/{view}", params=window)
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("at", EXTREMES)
def test_extreme_time_of_a_theft_is_a_422(owner_bike: tuple[Caller, int], at: str) -> None:
    owner, bike_id = owner_bike
    _refused(owner.post(f"/api/bikes/{bike_id}/theft", json={"stolen_at": at}))
