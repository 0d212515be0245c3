"""Station credentials against a real Mosquitto: a station publishes only as itself."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from backend import provisioning
from bikeguard.services import Broker, mosquitto_path, start_broker
from protocol import topics
from tests.backend.test_ingest import wait_until


def require_mosquitto(tool: str | None = None) -> None:
    """Skip when Mosquitto (or one of its tools) is not installed here; under CI, fail instead."""
    installed = Path(tool).exists() if tool else mosquitto_path() is not None
    if not installed:
        if os.environ.get("CI"):
            pytest.fail("CI must test against Mosquitto: .ci/run installs it")
        pytest.skip("mosquitto is not installed here (apt-get install mosquitto); CI installs it")


def provisioned_mosquitto(folder: Path, stations: list[str]) -> tuple[Broker, dict[str, str]]:
    """Mosquitto with the passwd and acl files `bikeguard broker files` makes for these stations and the backend
    user, no anonymous clients; the broker and each user's password."""
    users = [*stations, "bikeguard-backend"]
    passwords = {u: provisioning.new_password() for u in users}
    hashes = {u: provisioning.password_hash(p) for u, p in passwords.items()}
    broker = start_broker(
        "mosquitto",
        passwords=provisioning.password_file(hashes),
        acl=provisioning.acl_file(stations),
        password=passwords["bikeguard-backend"],  # broker.url is the backend's
    )
    return broker, passwords


def test_password_hash_is_what_mosquitto_passwd_writes():
    salt = base64.b64decode("u4cGZCc0FVaOhSqo")
    expected = (
        "$7$101$u4cGZCc0FVaOhSqo$604t74ZxefOjOX9Gx94w57v5XNy/pVGJ58xt5BfdGVhAsuOYRSUq3pp7IMi5Zueba8kp"
        "AW0EXlxY5PorThHztA=="
    )  # mosquitto_passwd -b pw st-001 secret, with this salt
    assert provisioning.password_hash("secret", salt, iterations=101) == expected


def test_acl_refuses_invalid_station_ids():
    with pytest.raises(topics.TopicError):
        provisioning.acl_file(["st-001", "../etc"])


def test_acl_lets_each_station_write_only_its_own_selftest():
    acl = provisioning.acl_file(["st-a"], "bikeguard-backend").splitlines()
    backend, station = acl[acl.index("user bikeguard-backend") :], acl[acl.index("user st-a") :]
    assert f"topic read {topics.ROOT}/stations/+/selftest" in backend[: backend.index("")]
    assert f"topic write {topics.station_topic('st-a', topics.SELFTEST)}" in station


def _client(port: int, user: str, password: str) -> tuple[mqtt.Client, threading.Event, list[int]]:
    connected, codes = threading.Event(), []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}")
    c.username_pw_set(user, password)

    def on_connect(_c, _u, _f, reason, _p):
        codes.append(reason.value)
        connected.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    connected.wait(15)
    return c, connected, codes


def subscribe_and_wait(client: mqtt.Client, subscriptions: list[tuple[str, int]]) -> None:
    """Subscribe and return once the broker has acknowledged (SUBACK), so nothing published after is missed."""
    acknowledged = threading.Event()
    client.on_subscribe = lambda *_a: acknowledged.set()
    client.subscribe(subscriptions)
    assert acknowledged.wait(15), f"the broker did not acknowledge the subscription to {subscriptions}"


@pytest.mark.mosquitto
def test_with_generated_files_a_station_cannot_publish_as_another(tmp_path: Path):
    require_mosquitto()
    broker, passwords = provisioned_mosquitto(tmp_path, ["st-a", "st-b"])
    try:
        received: list[str] = []
        backend, _, codes = _client(broker.port, "bikeguard-backend", passwords["bikeguard-backend"])
        assert codes == [0]
        backend.on_message = lambda _c, _u, m: received.append(m.topic)
        subscribe_and_wait(backend, [(topics.station_filter("sightings"), 1)])

        station_a, _, codes = _client(broker.port, "st-a", passwords["st-a"])
        assert codes == [0]
        station_a.publish(topics.station_topic("st-b", "sightings"), b"{}", qos=1).wait_for_publish(5)
        station_a.publish(topics.station_topic("st-a", "sightings"), b"{}", qos=1).wait_for_publish(5)
        wait_until(lambda: topics.station_topic("st-a", "sightings") in received)
        time.sleep(0.3)
        assert received == [topics.station_topic("st-a", "sightings")]  # st-a could not speak for st-b

        _, _, codes = _client(broker.port, "st-a", "wrong password")
        assert codes and codes[0] != 0
        for c in (backend, station_a):
            c.disconnect()
            c.loop_stop()
    finally:
        broker.stop()


def test_mosquitto_passwd_tool_agrees_when_installed(tmp_path: Path):
    tool = "/usr/bin/mosquitto_passwd"
    require_mosquitto(tool)
    pw = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(pw), "st-001", "s3cret"], check=True)
    stored = pw.read_text().strip().split(":", 1)[1]
    _, _, iterations, salt, _ = stored.split("$")
    assert provisioning.password_hash("s3cret", base64.b64decode(salt), int(iterations)) == stored
