"""The hot list: the chips of stolen bikes, pushed to every gateway as a retained, versioned, signed message."""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from backend.broker_client import broker_client
from backend.settings import BackendSettings
from protocol import topics
from protocol.messages import Hotlist, StationCommand, format_tag
from protocol.signing import sign, sign_hotlist

log = logging.getLogger(__name__)


async def issue_hotlist(conn: psycopg.AsyncConnection[Any]) -> Hotlist:
    """Record a new version of the hot list (monotonic across workers) and return it."""
    cur = await conn.execute(
        "INSERT INTO hotlist_versions (tag_ids)"
        " SELECT coalesce(array_agg(c.tag_id ORDER BY c.tag_id), '{}')"
        " FROM theft_reports t JOIN chips c USING (bike_id) WHERE t.recovered_at IS NULL"
        " RETURNING version, issued_at, tag_ids"
    )
    version, issued_at, tag_ids = await cur.fetchone()  # type: ignore[misc]
    return Hotlist(version=version, issued_at=issued_at, tags=[format_tag(t) for t in tag_ids])


class HotlistPublisher:
    """Publishes the hot list retained on the broker through an MQTT client of its own, so an API process
    publishes it whether or not it also ingests; and the commands to stations (backend.commands), signed with the
    same key.

    A list published while the broker is away is kept by paho (QoS 1) and sent once connected, so the latest list
    reaches the broker as soon as it can be reached. Its thread connects, then runs paho's loop (which reconnects
    by itself); stopping interrupts a wait between connection attempts at once.
    """

    def __init__(self, settings: BackendSettings) -> None:
        # TLS for an mqtts:// URL, as the ingest's clients (backend.broker_client).
        client, self._address = broker_client(settings, f"{settings.mqtt_client_id}-hotlist")
        client.on_connect = self._on_connect
        self._client = client
        self._key = settings.hotlist_key
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hotlist-publisher", daemon=True)

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the hot-list publisher: %s", reason)
        else:
            log.info("hot-list publisher connected to %s:%d", *self._address)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._client.connect(*self._address, keepalive=30)
            except OSError as exc:
                # Once per outage: an API run without a broker must not fill its log.
                log.log(
                    logging.WARNING if backoff == 0.5 else logging.DEBUG,
                    "hot-list publisher cannot reach the broker at %s:%d, retrying: %s",
                    *self._address,
                    exc,
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if self._stopping.is_set():  # stop() came while connecting: its disconnect found no connection yet
                self._client.disconnect()
            self._client.loop_forever()  # until disconnect(); reconnects by itself when the broker is lost
            return

    def start(self) -> None:
        """Connect in the background."""
        self._thread.start()

    def publish(self, message: Hotlist) -> None:
        """Sign this version of the hot list and publish it, retained (at once, or as soon as the broker is reached)."""
        self._client.publish(topics.HOTLIST, sign_hotlist(message, self._key).to_json(), qos=1, retain=True)

    def publish_command(self, command: StationCommand) -> None:
        """Sign a command and publish it to its station (not retained: a station away gets it from its persistent
        session, and one that comes back after it expired refuses it)."""
        topic = topics.command_topic(command.station_id, command.name)
        self._client.publish(topic, sign(command, self._key).to_json(), qos=1)

    def stop(self) -> None:
        """Disconnect (what is still unsent is dropped: the next start publishes a new version)."""
        self._stopping.set()
        self._client.disconnect()
        self._thread.join(timeout=10)
