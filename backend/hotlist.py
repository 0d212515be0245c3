"""The hot list: the chips of stolen bikes, pushed to every gateway as a retained, versioned, signed message.

A stolen v1 chip is listed by its tag id; a stolen v2 chip only by the ephemeral ids it beacons in the windows around
now and ahead (its tag id never goes on the air, so the public list never names it either). Those eids run out, so
the list is renewed as the windows pass (renew_hotlists, in the API's lifespan) while a v2 chip is on it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from psycopg_pool import AsyncConnectionPool

from backend.broker_client import broker_client
from backend.chip_keys import active_v2_keys_of
from backend.settings import BackendSettings
from backend.vault import Vault, VaultError
from protocol import topics
from protocol.beacon_v2 import WINDOW_S, ChipKey, window_of
from protocol.messages import HOTLIST_EID_WINDOWS_MAX, Hotlist, StationCommand, format_tag
from protocol.signing import sign, sign_hotlist

log = logging.getLogger(__name__)


# Every chip of a bike with an open theft report, with its kind.
_STOLEN = (
    "SELECT c.tag_id, c.kind FROM theft_reports t JOIN chips c USING (bike_id)"
    " WHERE t.recovered_at IS NULL ORDER BY c.tag_id"
)
# Whether a renewed list is needed: a v2 chip is stolen now, or the latest list names one (whose eids a new list must
# drop: the chip was recovered, replaced or deregistered since); and when the latest list was issued.
_RENEWAL = """
SELECT EXISTS (SELECT 1 FROM theft_reports t JOIN chips c USING (bike_id)
               WHERE t.recovered_at IS NULL AND c.kind = 'v2')
       OR EXISTS (SELECT 1 FROM chips c WHERE c.kind = 'v2' AND c.tag_id = ANY (h.tag_ids)),
       h.issued_at
FROM (SELECT tag_ids, issued_at FROM hotlist_versions ORDER BY version DESC LIMIT 1) h
"""
# One renewal at a time across every API process (a transaction-level advisory lock; the key is arbitrary but fixed).
_RENEWAL_LOCK = 0x686F746C697374  # "hotlist"

Clock = Callable[[], float]


def eid_windows(now_s: float, count: int) -> list[int]:
    """The windows a list issued at `now_s` carries eids for: the one before (a chip whose clock runs late still
    beacons it), the current one, and the rest of `count` ahead (what a station with its uplink down goes on with)."""
    if not 3 <= count <= HOTLIST_EID_WINDOWS_MAX:
        raise ValueError(f"a hot list carries 3 to {HOTLIST_EID_WINDOWS_MAX} windows of eids, not {count}")
    first = window_of(now_s) - 1
    return list(range(first, first + count))


def eids_of(keys: dict[int, bytes], windows: list[int]) -> dict[str, list[str]]:
    """The hot list's eids of these chips (tag id -> key) for these windows, each window's sorted: a chip's place in
    one window's list says nothing about its place in the next."""
    by_window: dict[int, list[str]] = {w: [] for w in windows}
    for key in keys.values():
        for window, eid in zip(windows, ChipKey(key).eids(windows), strict=True):
            by_window[window].append(eid.hex())
    return {str(w): sorted(eids) for w, eids in by_window.items()}


async def issue_hotlist(
    conn: psycopg.AsyncConnection[Any],
    vault: Vault,
    *,
    now_s: float | None = None,
    eid_windows_count: int = HOTLIST_EID_WINDOWS_MAX,
) -> Hotlist:
    """Record a new version of the hot list (monotonic across workers) and return it: stolen v1 chips by tag id,
    stolen v2 chips only by their ephemeral ids for `eid_windows(now_s, eid_windows_count)`, decrypting their keys
    with `vault`. A list without a stolen v2 chip has no eids at all (byte for byte the list of before)."""
    now_s = time.time() if now_s is None else now_s
    cur = await conn.execute(_STOLEN)
    rows = [(int(tag_id), kind) for tag_id, kind in await cur.fetchall()]
    v2 = [tag_id for tag_id, kind in rows if kind == "v2"]
    keys = dict(await active_v2_keys_of(conn, vault, v2)) if v2 else {}
    for tag_id in v2:
        if tag_id not in keys:
            # No station can flag it: say so, and never list its tag id instead (it does not beacon it).
            log.warning("stolen v2 chip %s has no active key: no station can flag it", format_tag(tag_id))
    tags = [tag_id for tag_id, kind in rows if kind != "v2"]
    # tag_ids records every chip this version covers, v2 ones included: the renewal reads it to know whether the
    # list out there still carries eids. It is the backend's own record, never published.
    cur = await conn.execute(
        "INSERT INTO hotlist_versions (issued_at, tag_ids) VALUES (%s, %s) RETURNING version, issued_at",
        (datetime.fromtimestamp(now_s, UTC), [tag_id for tag_id, _ in rows]),
    )
    version, issued_at = await cur.fetchone()  # type: ignore[misc]
    # Off the event loop: about 40 ms of one core per 1,000 stolen v2 chips at 16 windows (docs/benchmarks.md).
    eids = await asyncio.to_thread(eids_of, keys, eid_windows(now_s, eid_windows_count)) if keys else None
    return Hotlist(version=version, issued_at=issued_at, tags=[format_tag(t) for t in tags], eids=eids)


async def renew_hotlist(
    conn: psycopg.AsyncConnection[Any], vault: Vault, *, now_s: float, eid_windows_count: int = HOTLIST_EID_WINDOWS_MAX
) -> Hotlist | None:
    """A new version when the window has moved since the latest list was issued and a stolen v2 chip needs fresh
    eids (or the latest list still lists one), else None; one process at a time decides, in the caller's
    transaction, so several API processes issue one list per window between them."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_RENEWAL_LOCK,))
    cur = await conn.execute(_RENEWAL)
    row = await cur.fetchone()
    if row is None:  # no list issued yet: the lifespan issues the first
        return None
    needed, issued_at = row
    if not needed or window_of(issued_at.timestamp()) >= window_of(now_s):
        return None
    return await issue_hotlist(conn, vault, now_s=now_s, eid_windows_count=eid_windows_count)


async def renew_hotlists(
    pool: AsyncConnectionPool,
    vault: Vault,
    publish: Callable[[Hotlist], None],
    settings: BackendSettings,
    clock: Clock = time.time,
) -> None:
    """Renew the hot list as windows pass (renew_hotlist), and publish each new version, for ever. It wakes at the next
    window's start by `clock`, and at least every hotlist_renew_check_s: asyncio sleeps on the monotonic clock, the
    windows are wall-clock time, and the two part when the wall clock is stepped."""
    while True:
        now_s = clock()
        try:
            async with pool.connection() as conn:
                message = await renew_hotlist(conn, vault, now_s=now_s, eid_windows_count=settings.hotlist_eid_windows)
            if message is not None:
                publish(message)
                log.info(
                    "hot list version %d renewed for window %d: %d chips, %d eids a window",
                    message.version,
                    window_of(now_s),
                    len(message.tags),
                    max((len(e) for e in (message.eids or {}).values()), default=0),
                )
        except (psycopg.Error, VaultError):
            # The database away or a key that does not decrypt: tried again at the next wake; the list out there
            # still covers hours ahead.
            log.exception("hot-list renewal failed; will retry in %.0f s", settings.hotlist_renew_check_s)
        until_next_s = (window_of(now_s) + 1) * WINDOW_S - now_s
        await asyncio.sleep(max(0.0, min(until_next_s, settings.hotlist_renew_check_s)))


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
