"""Coverage on a small known road network: a plus-shaped crossing of two 1 km roads."""

from __future__ import annotations

import math

import pytest

from backend.coverage import Antenna, Projection, StationSite, compute

LAT0, LON0 = 30.27, 120.15
PROJ = Projection(LAT0, LON0)


def _at(x_m: float, y_m: float) -> tuple[float, float]:
    return PROJ.to_latlon(x_m, y_m)


# Two straight roads of 1000 m crossing at (0, 0): west-east and south-north.
ROADS = [[_at(-500, 0), _at(0, 0), _at(500, 0)], [_at(0, -500), _at(0, 0), _at(0, 500)]]


def test_a_station_at_the_crossing_covers_its_range_along_each_arm():
    centre = StationSite("st-1", *_at(0, 0), range_m=100)
    cov = compute([centre], ROADS, suggest=0)
    assert cov.road_m == pytest.approx(2000, rel=1e-3)
    assert cov.covered_m == pytest.approx(400, rel=1e-2)  # 100 m along each of the four arms
    assert cov.share == pytest.approx(0.2, rel=1e-2)
    assert len(cov.uncovered) == 4  # the four arms beyond the station's range


def test_no_station_means_nothing_covered():
    cov = compute([], ROADS, suggest=0)
    assert cov.covered_m == pytest.approx(0) and cov.share == 0


def test_antenna_sectors_cover_only_the_arms_they_face():
    # Two 90° beams facing north and east: the south and west arms are not heard.
    site = StationSite("st-1", *_at(0, 0), antennas=(Antenna(0, 90, 100), Antenna(90, 90, 100)))
    cov = compute([site], ROADS, suggest=0)
    assert cov.covered_m == pytest.approx(200, rel=2e-2)


def test_greedy_suggestions_take_the_most_uncovered_road_first():
    centre = StationSite("st-1", *_at(0, 0), range_m=100)
    cov = compute([centre], ROADS, suggest=3, new_range_m=100)
    assert len(cov.suggestions) == 3
    gains = [s.gain_m for s in cov.suggestions]
    assert gains == sorted(gains, reverse=True)
    assert gains[0] == pytest.approx(200, rel=2e-2)  # a full diameter along one uncovered arm
    # Each suggestion lies on a road, outside the existing station's range.
    for s in cov.suggestions:
        x, y = PROJ.to_m(s.lat, s.lon)
        assert min(abs(x), abs(y)) < 1 and math.hypot(x, y) >= 150
    after = compute(
        [centre, *(StationSite(f"new-{i}", s.lat, s.lon) for i, s in enumerate(cov.suggestions))], ROADS, suggest=0
    )
    assert after.covered_m == pytest.approx(400 + sum(gains), rel=2e-2)
