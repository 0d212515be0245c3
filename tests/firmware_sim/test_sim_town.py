"""firmware_sim.town: a deterministic town whose bikes ride its roads past its stations."""

from __future__ import annotations

import math
import re

import pytest
from shapely.geometry import LineString, MultiLineString, Point

from firmware_sim.town import Bike, Town, TownError
from protocol.frames import TagFlags


@pytest.fixture(scope="module")
def town() -> Town:
    return Town.generate(42)


def road_lines_m(town: Town) -> MultiLineString:
    return MultiLineString([LineString(line) for line in town.network.polylines()])


def test_default_town_has_twenty_stations_and_two_hundred_bikes(town: Town) -> None:
    assert len(town.stations) == 20
    assert [s.station_id for s in town.stations] == [f"st-{k:03d}" for k in range(1, 21)]
    assert len(town.bikes) == 200
    assert len({b.tag_id for b in town.bikes}) == 200
    assert len({b.plate for b in town.bikes}) == 200
    assert all(re.fullmatch(r"HZ-\d{5}", b.plate) and b.plate.isascii() for b in town.bikes)
    assert all(b.plate_cn == "浙A·" + b.plate[3:] for b in town.bikes)
    assert all(0 < b.tag_id < 0xFFFFFFFF for b in town.bikes)
    assert all(re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", b.owner) for b in town.bikes)
    assert len({s.name for s in town.stations}) == 20


def test_town_lies_around_its_centre_in_hangzhou(town: Town) -> None:
    points = [p for line in town.roads for p in line]
    lats = [p[0] for p in points]
    lons = [p[1] for p in points]
    assert abs((min(lats) + max(lats)) / 2 - 30.274) < 0.01
    assert abs((min(lons) + max(lons)) / 2 - 120.155) < 0.01
    assert max(lats) - min(lats) < 0.05 and max(lons) - min(lons) < 0.05


def test_same_seed_gives_the_same_town_and_the_same_beacons() -> None:
    a, b = Town.generate(7, stations=8, bikes=40), Town.generate(7, stations=8, bikes=40)
    assert a.roads == b.roads
    assert a.stations == b.stations
    assert [(x.plate, x.tag_id, x.owner) for x in a.bikes] == [(y.plate, y.tag_id, y.owner) for y in b.bikes]
    for _ in range(300):
        assert a.step(0.2) == b.step(0.2)


def test_another_seed_gives_another_town() -> None:
    a, b = Town.generate(1, stations=8, bikes=40), Town.generate(2, stations=8, bikes=40)
    assert a.roads != b.roads
    assert {x.tag_id for x in a.bikes} != {y.tag_id for y in b.bikes}


def test_roads_are_valid_lat_lon_polylines(town: Town) -> None:
    assert len(town.roads) >= 10
    for line in town.roads:
        assert len(line) >= 2
        assert LineString([(lon, lat) for lat, lon in line]).is_valid


def test_stations_stand_where_two_streets_cross(town: Town) -> None:
    for station in town.stations:
        at = (station.lat, station.lon)
        through = [line for line in town.roads if any(math.dist(at, p) < 1e-9 for p in line)]
        assert len(through) >= 2, station


def test_blocks_are_two_hundred_fifty_to_four_hundred_metres(town: Town) -> None:
    net = town.network
    lengths = [math.dist(net.nodes[u], net.nodes[v]) for u, v in net.geometry]
    assert min(lengths) >= 200 and max(lengths) <= 460
    assert 280 <= sum(lengths) / len(lengths) <= 370


def test_riding_bikes_stay_on_roads_at_e_bike_speeds(town: Town) -> None:
    roads = road_lines_m(town)
    before = {b.bike_no: (b.x_m, b.y_m) for b in town.bikes}
    for _ in range(60):
        town.step(1.0)
        for bike in town.bikes:
            assert roads.distance(Point(bike.x_m, bike.y_m)) < 0.5
            moved = math.dist(before[bike.bike_no], (bike.x_m, bike.y_m))
            limit = 30 if bike.stolen else 25
            assert moved <= limit / 3.6 + 1e-6
            if bike.riding and not bike.stolen:
                assert 15 / 3.6 <= bike.speed_mps <= 25 / 3.6
            before[bike.bike_no] = (bike.x_m, bike.y_m)
    assert sum(b.riding for b in town.bikes) >= 20


def test_parked_bikes_stay_put_and_beacon_without_motion() -> None:
    town = Town.generate(5)
    parked = {b.tag_id: b for b in town.bikes if not b.riding and b.pause_s > 30}
    where = {t: (b.x_m, b.y_m) for t, b in parked.items()}
    parked_beacons, riding_beacons = [], []
    for _ in range(100):
        heard = [beacon for beacons in town.step(0.2).values() for beacon in beacons]
        riding = {b.tag_id for b in town.bikes if b.riding}
        riding_beacons += [b for b in heard if b.tag_id in riding]
        parked_beacons += [b for b in heard if b.tag_id not in riding]
    assert all((b.x_m, b.y_m) == where[t] for t, b in parked.items())
    assert {b.tag_id for b in parked_beacons} & set(parked)
    assert parked_beacons and riding_beacons
    assert all(TagFlags.MOTION not in b.flags for b in parked_beacons)
    assert all(TagFlags.MOTION in b.flags for b in riding_beacons)


def test_stations_hear_only_tags_within_range_on_the_side_of_their_antenna() -> None:
    town = Town.generate(9)
    by_tag = {b.tag_id: b for b in town.bikes}
    antennas = set()
    checked = 0
    for _ in range(300):
        for station_id, beacons in town.step(0.2).items():
            station = town.station(station_id)
            for beacon in beacons:
                bike = by_tag[beacon.tag_id]
                dx, dy = bike.x_m - station.x_m, bike.y_m - station.y_m
                assert math.hypot(dx, dy) <= town.path_loss.range_m
                assert -128 <= beacon.rssi_dbm <= -20
                bearing = math.degrees(math.atan2(dx, dy))
                off = (bearing - station.antenna_bearing_deg + 180) % 360 - 180
                if abs(abs(off) - 90) > 1:  # exactly side-on is a coin toss
                    assert beacon.antenna == (1 if abs(off) < 90 else 0)
                antennas.add(beacon.antenna)
                checked += 1
    assert checked > 500
    assert antennas == {0, 1}


def test_a_stolen_bike_rides_away_fast() -> None:
    town = Town.generate(3)
    bike = town.bike_to_steal()
    assert not bike.riding
    start = (bike.x_m, bike.y_m)
    assert town.theft(bike.bike_no) is bike
    assert bike.stolen and bike.riding and bike.speed_mps > 25 / 3.6
    heard = [b for _ in range(60) for bs in town.step(1.0).values() for b in bs if b.tag_id == bike.tag_id]
    assert math.dist(start, (bike.x_m, bike.y_m)) > 200
    assert heard and any(TagFlags.MOTION in b.flags for b in heard)


def test_a_bike_being_ridden_can_be_stolen_too() -> None:
    town = Town.generate(8, stations=6, bikes=30)
    bike = next(b for b in town.bikes if b.riding)
    town.step(3.0)
    town.theft(bike)
    start = (bike.x_m, bike.y_m)
    for _ in range(60):
        town.step(1.0)
    assert bike.stolen and bike.speed_mps == pytest.approx(30 / 3.6)
    assert math.dist(start, (bike.x_m, bike.y_m)) > 100


def test_a_theft_can_tamper_with_the_tag() -> None:
    town = Town.generate(3, stations=4, bikes=10)
    bike: Bike = town.theft(1, tamper=True)
    assert TagFlags.TAMPER in bike.tag.flags


def test_a_stolen_bike_is_hidden_once_it_arrives() -> None:
    town = Town.generate(4, stations=4, bikes=5)
    bike = town.theft(2)
    for _ in range(3600):
        town.step(1.0)
        if not bike.riding:
            break
    assert not bike.riding
    where = (bike.x_m, bike.y_m)
    town.step(600.0)
    assert (bike.x_m, bike.y_m) == where


def test_unknown_bike_or_station_is_a_town_error(town: Town) -> None:
    with pytest.raises(TownError):
        town.bike(999_999)
    with pytest.raises(TownError):
        town.station("st-999")


@pytest.mark.parametrize(("stations", "bikes"), [(0, 10), (5, -1)])
def test_impossible_towns_are_refused(stations: int, bikes: int) -> None:
    with pytest.raises(TownError):
        Town.generate(1, stations=stations, bikes=bikes)


def test_a_big_town_steps_fast() -> None:
    import time

    town = Town.generate(11, stations=50, bikes=1000)
    start = time.process_time()
    for _ in range(100):
        town.step(0.1)  # 10 simulated seconds
    assert time.process_time() - start < 1.0
