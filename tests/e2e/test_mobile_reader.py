"""A mobile reader end to end (issue 16): a patrol car's radio module and GPS receiver on two ptys → its gateway →
broker → backend → PostgreSQL. Its sightings carry the reader's positions along the simulated route; bad NMEA is
counted; a sighting without a fix is kept without a position; a stolen chip's alarm is placed where the car was;
a trajectory of a tag it saw uses those positions; an old-format batch of a fixed station still lands."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from backend import trajectories
from bikeguard.demo import GatewayFleet, bootstrap_admin, report_theft_as_owner, seed_backend, sign_in
from bikeguard.services import Broker
from firmware_sim.gps import Route, SimulatedGps, town_route
from firmware_sim.radio import RadioModule
from firmware_sim.town import Town
from gateway.settings import GatewaySettings
from gateway.station import Fleet
from protocol.frames import Beacon, TagFlags
from protocol.signing import public_key_of
from protocol.topics import station_topic
from tests import factories
from tests.backend.test_ingest import wait_until

PATROL = "patrol-1"
SPEED_MPS = 15.0


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dy = (b[0] - a[0]) * 111_320
    dx = (b[1] - a[1]) * 111_320 * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy)


def _rows(url: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


class Patrol:
    """The patrol car's radio module hearing some tags every 0.2 s, on a thread, until stopped."""

    def __init__(self, radio: RadioModule) -> None:
        self.radio = radio
        self.tags: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._counter = 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._counter += 1
            for tag in list(self.tags):
                self.radio.hear(Beacon(tag, self._counter, TagFlags(0), -60, 1))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _publish_old_format_batch(broker: Broker, station_id: str, tag_hex: str) -> None:
    """A batch exactly as gateways wrote them before issue 16 (no position key anywhere)."""
    now = datetime.now(UTC)
    first = (now - timedelta(seconds=20)).isoformat().replace("+00:00", "Z")
    last = (now - timedelta(seconds=12)).isoformat().replace("+00:00", "Z")
    payload = (
        f'{{"v": 1, "station_id": "{station_id}", "batch_seq": 42, "sent_at": "{first}",'
        f' "sightings": [{{"tag_id": "{tag_hex}", "first_seen_at": "{first}", "last_seen_at": "{last}",'
        f' "beacons": 4, "peak_rssi_dbm": -61, "antenna": 1, "flags": 4}}]}}'
    ).encode()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.username_pw_set(broker.username, broker.password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(station_topic(station_id, "sightings"), payload, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_patrol_cars_reader_reports_sightings_where_it_drove(
    backend_url: str, broker: Broker, database_url: str, tmp_path: Path
) -> None:
    town = Town.generate(5, stations=6, bikes=20)
    staff = seed_backend(backend_url, town, bootstrap_admin(database_url))
    start = town.station("st-001")
    with sign_in(backend_url, staff.installer) as installer:
        # Registered at the depot (st-001's corner) and marked mobile: from then on its place is its last fix.
        installer.put(
            "/api/stations", json=[{"station_id": PATROL, "name": "Patrol car 7", "lat": start.lat, "lon": start.lon}]
        ).raise_for_status()
        r = installer.patch(f"/api/stations/{PATROL}", json={"mobile": True})
        assert r.status_code == 200 and r.json()["mobile"] is True, r.text
    stolen, passing, in_tunnel = town.bikes[0], town.bikes[1], town.bikes[2]
    assert report_theft_as_owner(backend_url, staff, stolen.plate).status_code == 201

    route = Route(town_route(town, "st-001", "st-004"), speed_mps=SPEED_MPS)
    police = sign_in(backend_url, staff.police)
    with RadioModule(status_interval_s=None) as radio, SimulatedGps(route, interval_s=0.2) as gps:
        settings = GatewaySettings(
            station_id=PATROL,
            serial_url=radio.port,
            gps_url=gps.port,
            gps_fix_max_age_s=1.0,
            mqtt_url=broker.url,
            spool_path=tmp_path / f"{PATROL}.spool",
            passage_gap_s=0.6,
            passage_max_s=1.0,
            batch_interval_s=0.2,
            status_interval_s=5,
            hotlist_public_key=public_key_of(factories.SECRETS["hotlist_signing_key"].get_secret_value()),
        )
        fleet = Fleet([settings])
        station = fleet.stations[0]
        gateways = GatewayFleet()
        patrol = Patrol(radio)
        radio.start()
        gps.start()
        gateways.start()
        gateways.add(fleet.run())
        patrol.start()
        try:
            wait_until(lambda: station.gps is not None and station.gps.fixes > 0, timeout_s=30)
            gps.restart_route()
            patrol.tags[:] = [stolen.tag_id, passing.tag_id]
            gps.send_raw(b"$GPRMC,120000.00,A,3016.4474,N,12009.3592,E,0.0,0.0,291126,,,A*00\r\n")  # bad checksum
            gps.send_raw(b"\x00\xff garbage on the GPS line\r\n")
            time.sleep(6)
            # Into a tunnel: no fix; a tag heard now is sighted without a position, not lost.
            gps.fix = False
            patrol.tags[:] = []
            time.sleep(1.5)
            patrol.tags[:] = [in_tunnel.tag_id]
            time.sleep(1.5)
            patrol.tags[:] = []
            gps.fix = True

            wait_until(
                lambda: bool(_rows(database_url, "SELECT 1 FROM sightings WHERE tag_id = %s", in_tunnel.tag_id)),
                timeout_s=60,
            )
            placed = _rows(
                database_url,
                "SELECT tag_id, reader_lat, reader_lon, reader_fix_at FROM sightings"
                " WHERE station_id = %s AND reader_lat IS NOT NULL ORDER BY reader_fix_at",
                PATROL,
            )
            # Each position is where the simulated car was at the fix's time, along its route on the town's roads.
            assert len(placed) >= 6, placed
            for _tag, lat, lon, fix_at in placed:
                truth, _ = route.at((fix_at - gps.started_at).total_seconds())
                assert _metres((lat, lon), truth) < 8.0, (lat, lon, fix_at, truth)
            assert _metres(placed[0][1:3], placed[-1][1:3]) > 30  # it moved
            assert station.gps is not None and station.gps.rejected["checksum"] >= 1
            assert station.gps.rejected["unparsable"] >= 1
            # The tunnel's sighting is kept, without a position, and the gateway counted it.
            (tunnel,) = _rows(
                database_url, "SELECT reader_lat, reader_fix_at FROM sightings WHERE tag_id = %s", in_tunnel.tag_id
            )
            assert tunnel == (None, None)
            assert station.aggregator.sightings_without_fix >= 1

            # The registry shows the car at its last known position; the live map's activity moves it there.
            ((lat, lon, position_at, mobile),) = _rows(
                database_url, "SELECT lat, lon, position_at, mobile FROM stations WHERE station_id = %s", PATROL
            )
            newest = max(placed, key=lambda p: p[3])
            assert mobile and position_at >= newest[3] and _metres((lat, lon), (start.lat, start.lon)) > 30
            activity = {a["station_id"]: a for a in police.get("/api/stations/activity").json()}
            assert activity[PATROL]["lat"] == lat and activity["st-001"]["lat"] is None

            # The stolen chip's alarm is where the car was when it heard the chip, not at the depot.
            alarms = [a for a in police.get("/api/alarms").json() if a["kind"] == "stolen_chip_seen"]
            assert len(alarms) == 1 and alarms[0]["station_id"] == PATROL, alarms
            heard_at = {(round(p[1], 9), round(p[2], 9)) for p in placed if p[0] == stolen.tag_id}
            heard_at |= {
                (round(a, 9), round(b, 9))
                for a, b in _rows(
                    database_url,
                    "SELECT reader_lat, reader_lon FROM station_alerts WHERE tag_id = %s AND reader_lat IS NOT NULL",
                    stolen.tag_id,
                )
            }
            assert (round(alarms[0]["lat"], 9), round(alarms[0]["lon"], 9)) in heard_at

            # The trajectory of a tag the car passed is drawn through the car's positions.
            async def trajectory() -> trajectories.Trajectory:
                async with await psycopg.AsyncConnection.connect(database_url) as conn:
                    now = datetime.now(UTC)
                    return await trajectories.trajectory(conn, passing.tag_id, now - timedelta(hours=1), now)

            t = asyncio.run(trajectory())
            passing_at = {(p[1], p[2]) for p in placed if p[0] == passing.tag_id}
            assert len(t.stops) >= 2 and {(s.lat, s.lon) for s in t.stops} <= passing_at
            assert sum(leg.distance_m for leg in t.legs) > 20

            # The installer's health does not hold its wandering against it.
            health = {h["station_id"]: h for h in police.get("/api/stations/health").json()}
            assert health[PATROL]["mobile"] is True and "fewer_passages" not in health[PATROL]["reason_codes"]

            # A fixed station's batch in the format of before issue 16 still lands, with no position.
            _publish_old_format_batch(broker, "st-002", f"{passing.tag_id:08X}")
            wait_until(
                lambda: bool(_rows(database_url, "SELECT 1 FROM sightings WHERE station_id = 'st-002'")),
                timeout_s=30,
            )
            assert _rows(database_url, "SELECT reader_lat FROM sightings WHERE station_id = 'st-002'") == [(None,)]
        finally:
            patrol.stop()
            gateways.stop()
            gps.stop()
            radio.stop()
            police.close()
