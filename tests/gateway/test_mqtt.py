"""The MQTT adapter against a real broker: answers waited for, a hung broker timed out, a dropped link reported."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import types

import pytest

from bikeguard.services import Broker, free_port
from gateway.mqtt import Connection, ConnectionLost, ConnectRefused, Message, MqttError, NoAnswer
from protocol.topics import ROOT, station_topic
from tests.gateway.harness import TcpHop

pytestmark = pytest.mark.anyio


def everything_of(station_id: str) -> str:
    """A filter for every topic of one station."""
    return f"{ROOT}/stations/{station_id}/#"


def connection(broker: Broker, port: int, client_id: str, timeout_s: float = 10.0) -> Connection:
    """A connection with the broker's credentials to its port, or to a hop's in front of it."""
    return Connection(
        broker.host, port, client_id=client_id, timeout_s=timeout_s, username=broker.username, password=broker.password
    )


async def test_a_publish_returns_at_its_puback_and_a_subscriber_receives_it(broker: Broker, topic_prefix: str) -> None:
    topic = station_topic(topic_prefix, "status")
    received: list[Message] = []
    async with connection(broker, broker.port, f"{topic_prefix}-a") as mqtt:
        assert mqtt.connected
        granted = await mqtt.subscribe(everything_of(topic_prefix), qos=1)
        assert granted == [1]
        await mqtt.publish(topic, b"hello", qos=1)
        async with asyncio.timeout(10):
            async for message in mqtt.messages():
                # Only the message this test published.
                if message.topic == topic:
                    received.append(message)
                    break
    [message] = received
    assert message == Message(topic, b"hello", retain=False)
    assert message.matches(everything_of(topic_prefix)) and not message.matches(everything_of("other"))
    assert not mqtt.connected


async def test_receiving_messages_leaves_no_garbage_cycles_of_paho_s_topic_matcher(
    broker: Broker, topic_prefix: str
) -> None:
    # paho matched every message against per-topic callbacks, and its topic_matches_sub each filter, with a recursive
    # closure that is a reference cycle: a vendor bridge's thousand stations made its garbage collector run for it.
    topic = station_topic(topic_prefix, "status")
    count = 50
    gc.collect()
    gc.disable()
    try:
        async with connection(broker, broker.port, f"{topic_prefix}-gc") as mqtt:
            await mqtt.subscribe(topic, qos=1)
            for i in range(count):
                await mqtt.publish(topic, b"%d" % i, qos=1)
            received = 0
            async with asyncio.timeout(10):
                async for message in mqtt.messages():
                    received += message.matches(topic)  # how a station tells its messages apart
                    if received == count:
                        break
        matchers = [
            o
            for o in gc.get_objects()
            if isinstance(o, types.FunctionType) and o.__qualname__ == "MQTTMatcher.iter_match.<locals>.rec"
        ]
        assert received == count and matchers == []
    finally:
        gc.enable()


async def test_a_broker_that_hangs_is_no_answer_within_the_timeout(
    broker: Broker, hop: TcpHop, topic_prefix: str
) -> None:
    await hop.open()
    async with connection(broker, hop.port, f"{topic_prefix}-h", timeout_s=0.5) as mqtt:
        await hop.freeze()
        started = time.monotonic()
        with pytest.raises(NoAnswer, match="no PUBACK"):
            await mqtt.publish(station_topic(topic_prefix, "status"), b"x", qos=1)
        assert time.monotonic() - started < 5


async def test_a_dropped_connection_ends_the_messages_and_fails_what_waits(
    broker: Broker, hop: TcpHop, topic_prefix: str
) -> None:
    await hop.open()
    async with connection(broker, hop.port, f"{topic_prefix}-d") as mqtt:
        await mqtt.subscribe(everything_of(topic_prefix), qos=1)
        await hop.cut()
        with pytest.raises(ConnectionLost, match="lost"):
            async with asyncio.timeout(10):
                async for _ in mqtt.messages():
                    pass
        assert not mqtt.connected
        with pytest.raises(ConnectionLost):
            await mqtt.publish(station_topic(topic_prefix, "status"), b"x", qos=1)


async def test_nothing_listening_is_an_mqtt_error_not_a_refusal(topic_prefix: str) -> None:
    with pytest.raises(MqttError) as caught:
        async with Connection("127.0.0.1", free_port(), client_id=f"{topic_prefix}-n", timeout_s=10):
            pass
    assert not isinstance(caught.value, ConnectRefused)


async def test_small_packets_leave_at_once(broker: Broker, topic_prefix: str) -> None:
    # With Nagle on (paho's default), a PUBACK for a confirmation waited for the broker's delayed ACK (40 ms) and
    # the station's window of publishes with it: a drain ran at ~370 batches/s (docs/benchmarks.md).
    async with connection(broker, broker.port, f"{topic_prefix}-nodelay") as mqtt:
        sock = mqtt._client.socket()
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
