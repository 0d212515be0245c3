"""The whole path on real parts: simulated radio modules → ptys → gateways → broker → backend → PostgreSQL
→ alarm on the live feed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bikeguard.demo import GatewayFleet, bootstrap_admin, report_theft_as_owner, seed_backend, sign_in
from bikeguard.services import Broker
from firmware_sim.runner import SimRunner
from firmware_sim.town import Town
from gateway.settings import GatewaySettings
from protocol.messages import format_tag
from protocol.signing import public_key_of
from tests import factories
from tests.backend.test_ingest import wait_until


class LiveFeedReader:
    """Reads the backend's server-sent events on a thread and keeps the alarm events."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.alarms: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self._thread.start()

    def _read(self, url: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(5, read=None)) as r:
            event = None
            for line in r.iter_lines():
                if self._stop:
                    return
                if line.startswith(": connected"):
                    self.connected.set()
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "alarm":
                    self.alarms.append({**json.loads(line[6:]), "_received": time.monotonic()})

    def stop(self) -> None:
        self._stop = True


def test_stolen_bike_passing_a_station_raises_an_alarm_on_the_live_feed(
    backend_url: str, broker: Broker, database_url: str, tmp_path: Path, topic_prefix: str
) -> None:
    town = Town.generate(5, stations=6, bikes=40)
    staff = seed_backend(backend_url, town, bootstrap_admin(database_url))
    police = sign_in(backend_url, staff.police)
    assert httpx.get(f"{backend_url}/api/live", timeout=5).status_code == 401  # the feed is for the police
    runner = SimRunner(town)
    fleet = GatewayFleet(
        [
            GatewaySettings(
                station_id=sid,
                serial_url=port,
                mqtt_url=broker.url,
                spool_path=tmp_path / f"{sid}.spool",
                passage_gap_s=1.0,
                batch_interval_s=0.2,
                status_interval_s=5,
                hotlist_public_key=public_key_of(factories.SECRETS["hotlist_signing_key"].get_secret_value()),
            )
            for sid, port in runner.ports.items()
        ]
    )
    feed = LiveFeedReader(f"{backend_url}/api/live", dict(police.headers))
    runner.start()
    fleet.start()
    try:
        assert feed.connected.wait(10)
        # Ordinary traffic first: passages of unstolen bikes are stored and raise nothing.
        wait_until(lambda: _count(database_url, "SELECT count(*) FROM sightings") > 0, timeout_s=30)
        assert feed.alarms == []

        bike = runner.steal(town.bike_to_steal().bike_no)
        reported = time.monotonic()
        r = report_theft_as_owner(backend_url, staff, bike.plate)
        assert r.status_code == 201, r.text

        tag = format_tag(bike.tag_id)
        wait_until(lambda: any(a["tag_id"] == tag for a in feed.alarms), timeout_s=60)
        alarm = next(a for a in feed.alarms if a["tag_id"] == tag)
        assert alarm["kind"] == "stolen_chip_seen" and alarm["plate"] == bike.plate
        assert alarm["station_id"] in runner.ports and alarm["trail"]
        print(f"alarm on the live feed {alarm['_received'] - reported:.2f} s after the theft report")

        # The stolen bike's passages land in the database too, and nothing was refused on the way.
        wait_until(
            lambda: _count(database_url, "SELECT count(*) FROM sightings WHERE tag_id = %s", bike.tag_id) > 0,
            timeout_s=60,
        )
        # (Only the town's topics: the shared broker also hands the backend other tests' retained statuses.)
        refused = "SELECT count(*) FROM rejected_messages WHERE split_part(topic, '/', 4) = ANY(%s)"
        assert _count(database_url, refused, list(runner.ports)) == 0
        assert _count(database_url, "SELECT count(*) FROM alarms") == 1
        stations = police.get("/api/stations").json()
        assert {s["state"] for s in stations} == {"online"}
    finally:
        feed.stop()
        fleet.stop()
        runner.stop()
        police.close()


def _count(url: str, sql: str, *args: object) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(sql, args).fetchone()[0])  # type: ignore[index]
