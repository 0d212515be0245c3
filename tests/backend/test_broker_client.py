"""backend.broker_client: the backend's paho clients, as the ingest workers and the hot-list publisher get them."""

from __future__ import annotations

import gc
import threading
import types

import paho.mqtt.client as mqtt

from backend.broker_client import broker_client
from backend.settings import BackendSettings
from bikeguard.services import Broker
from protocol.topics import station_topic


def test_messages_go_to_on_message_and_leave_no_cycles_of_paho_s_topic_matcher(
    broker: Broker, topic_prefix: str
) -> None:
    # paho matched every message against per-topic callbacks with a recursive closure that is a reference cycle: an
    # ingest worker's messages were garbage for the cyclic collector, which ran on paho's network thread for it.
    settings = BackendSettings(environment="development", database_url="postgresql://x", mqtt_url=broker.url)
    client, (host, port) = broker_client(settings, f"{topic_prefix}-gc")
    topic, count = station_topic(topic_prefix, "status"), 50
    received: list[bytes] = []
    all_in, subscribed = threading.Event(), threading.Event()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        received.append(message.payload)
        if len(received) == count:
            all_in.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    gc.collect()
    gc.disable()
    try:
        client.connect(host, port)
        client.loop_start()
        client.subscribe(topic, qos=1)
        assert subscribed.wait(10)
        for i in range(count):
            client.publish(topic, b"%d" % i, qos=1)
        assert all_in.wait(10), f"{len(received)} of {count} messages came"
        client.disconnect()
        client.loop_stop()
        matchers = [
            o
            for o in gc.get_objects()
            if isinstance(o, types.FunctionType) and o.__qualname__ == "MQTTMatcher.iter_match.<locals>.rec"
        ]
        assert received == [b"%d" % i for i in range(count)] and matchers == []
    finally:
        gc.enable()
