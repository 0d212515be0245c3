"""A v2 chip on the whole path, real parts: a simulated chip heard by a radio module on a pty → gateway (which knows no
key) → broker → backend ingest (which resolves it) → PostgreSQL; and a clone's replay of it to a cloned-chip alarm."""

from __future__ import annotations

import random
import time
from pathlib import Path

import psycopg

from bikeguard.demo import GatewayFleet, Login, sign_in
from bikeguard.services import Broker
from firmware_sim.clone import CloneAttacker
from firmware_sim.radio import RadioModule
from firmware_sim.tag_v2 import TagV2
from gateway.settings import GatewaySettings
from protocol.beacon_v2 import WINDOW_S, window_of
from protocol.signing import public_key_of
from tests import factories
from tests.backend.test_ingest import count, wait_until
from tests.backend.test_ingest_v2 import fit_v2, key_bytes


def gateway(station: str, radio: RadioModule, broker: Broker, tmp_path: Path) -> GatewayFleet:
    return GatewayFleet(
        [
            GatewaySettings(
                station_id=station,
                serial_url=radio.port,
                mqtt_url=broker.url,
                spool_path=tmp_path / f"{station}.spool",
                passage_gap_s=1.0,
                batch_interval_s=0.2,
                status_interval_s=5,
                hotlist_public_key=public_key_of(factories.SECRETS["hotlist_signing_key"].get_secret_value()),
            )
        ]
    )


def test_a_v2_chip_passing_a_station_is_stored_as_its_bike_and_its_clone_raises_an_alarm(
    backend_url: str, broker: Broker, database_url: str, tmp_path: Path, topic_prefix: str
) -> None:
    home, across_town = f"{topic_prefix}-v2-home", f"{topic_prefix}-v2-far"
    tag_id = 0x00E2E017
    with psycopg.connect(database_url) as conn:
        factories.station(conn, home)
        factories.station(conn, across_town, lat=30.33)
        fit_v2(conn, tag_id, 17)
    now = time.time()
    middle = window_of(now) * WINDOW_S + WINDOW_S / 2  # the chip's clock mid-window: no window change in the test
    chip = TagV2(tag_id, key_bytes(17), random.Random(1), epoch_unix_s=now, clock_offset_s=middle - now)
    with RadioModule(status_interval_s=None) as radio_home, RadioModule(status_interval_s=None) as radio_far:
        radio_home.start()
        radio_far.start()
        fleets = [gateway(home, radio_home, broker, tmp_path), gateway(across_town, radio_far, broker, tmp_path)]
        for fleet in fleets:
            fleet.start()
        try:
            # Both gateways up (their first status stored) before the bike comes by.
            online = "SELECT count(*) FROM station_status WHERE station_id = ANY(%s) AND state = 'online'"
            wait_until(lambda: count(database_url, online, [home, across_town]) == 2, 30)
            clone = CloneAttacker(random.Random(2))
            for _ in range(3):  # the bike rides past its home station: three beacons, one passage
                chip.next_beacon_at_s = time.time() - chip.epoch_unix_s
                [sent] = chip.poll(chip.next_beacon_at_s)
                clone.capture(sent.air)  # a thief's receiver at the corner hears them too
                radio_home.hear(sent.frame(rssi_dbm=-60, antenna=0))
                time.sleep(0.1)
            wait_until(lambda: count(database_url, "SELECT count(*) FROM sightings WHERE tag_id = %s", tag_id) == 1, 30)
            with psycopg.connect(database_url) as conn:
                stored = conn.execute(
                    "SELECT station_id, beacons FROM sightings WHERE tag_id = %s", (tag_id,)
                ).fetchone()
            assert stored == (home, 3), "the station never knew the chip; the backend found it"

            # Across town, a clone plays one of the captured beacons over and over.
            replayed = clone.replay(sent.air.eid)
            for _ in range(2):
                radio_far.hear(replayed.frame(rssi_dbm=-55, antenna=1))
                time.sleep(0.1)
            wait_until(lambda: count(database_url, "SELECT count(*) FROM alarms WHERE tag_id = %s", tag_id) == 1, 30)
            with psycopg.connect(database_url) as conn:
                alarm = conn.execute("SELECT kind, station_id FROM alarms WHERE tag_id = %s", (tag_id,)).fetchone()
                passages = conn.execute("SELECT count(*) FROM sightings WHERE tag_id = %s", (tag_id,)).fetchone()
            assert alarm == ("chip_cloned", across_town)
            assert passages == (1,), "the clone's passage is not the bike's"
        finally:
            for fleet in fleets:
                fleet.stop()


def test_a_stolen_v2_chip_is_flagged_at_its_first_beacon_by_the_hot_list_the_backend_publishes(
    backend_url: str, broker: Broker, database_url: str, tmp_path: Path, topic_prefix: str
) -> None:
    """The owner reports the theft; the backend lists the chip's ephemeral ids (never its tag id) in the signed hot
    list; the station, which holds no key, flags the chip's first beacon; the ingest resolves the alert to the bike."""
    station = f"{topic_prefix}-v2-edge"
    tag_id = 0x00E2E018
    with psycopg.connect(database_url) as conn:
        factories.station(conn, station)
        bike_id, _ = fit_v2(conn, tag_id, 18)
        owner_id = conn.execute("SELECT owner_id FROM bikes WHERE bike_id = %s", (bike_id,)).fetchone()[0]
        username = factories.account(conn, "owner", owner_id=owner_id)
    now = time.time()
    middle = window_of(now) * WINDOW_S + WINDOW_S / 2
    chip = TagV2(tag_id, key_bytes(18), random.Random(3), epoch_unix_s=now, clock_offset_s=middle - now)
    with RadioModule(status_interval_s=None) as radio:
        radio.start()
        fleet = gateway(station, radio, broker, tmp_path)
        fleet.start()
        try:
            online = "SELECT count(*) FROM station_status WHERE station_id = %s AND state = 'online'"
            wait_until(lambda: count(database_url, online, station) == 1, 30)
            with sign_in(backend_url, Login(username, factories.PASSWORD)) as owner:
                r = owner.post(f"/api/bikes/{bike_id}/theft", json={"place": "at the market", "circumstances": "gone"})
                assert r.status_code == 201, r.text
            # The station has the list once its hot-list gauge counts the chip's eids.
            time.sleep(1.0)
            chip.next_beacon_at_s = time.time() - chip.epoch_unix_s
            [sent] = chip.poll(chip.next_beacon_at_s)
            radio.hear(sent.frame(rssi_dbm=-62, antenna=0))  # one beacon: the passage has not closed yet
            alerts = (
                "SELECT count(*) FROM station_alerts WHERE station_id = %s AND tag_id = %s AND kind = 'hotlist_hit'"
            )
            wait_until(lambda: count(database_url, alerts, station, tag_id) == 1, 30)
            with psycopg.connect(database_url) as conn:
                alarm = conn.execute("SELECT kind, station_id FROM alarms WHERE tag_id = %s", (tag_id,)).fetchone()
                published = conn.execute("SELECT count(*) FROM sightings WHERE tag_id = %s", (tag_id,)).fetchone()
            assert alarm == ("stolen_chip_seen", station)
            assert published == (0,), "flagged at the first beacon, before its passage closed"
        finally:
            fleet.stop()
