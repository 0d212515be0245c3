"""Delivery on the station's side: a batch leaves the spool when the backend confirms it, not at its PUBACK."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bikeguard.services import Broker
from gateway.station import Station
from protocol.messages import Confirmation, SightingBatch, utcnow
from protocol.topics import confirmations_topic
from tests.gateway.harness import FakeModule, TcpHop, beacon, eventually, fast_settings, mqtt_client, running, watching

pytestmark = pytest.mark.anyio


async def test_a_batch_acknowledged_by_the_broker_but_never_confirmed_is_sent_again_until_confirmed(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    settings = fast_settings(
        topic_prefix, module.path, broker.url, tmp_path / "s.spool", passage_gap_s=0.2, confirm_timeout_s=0.5
    )
    async with watching(broker, topic_prefix, confirm=False) as backend, running(Station(settings)) as station:
        module.send(beacon(0x77))
        [first] = await backend.wait("sightings")
        seq = SightingBatch.parse(first).batch_seq
        assert station.spool is not None and station.uplink is not None
        await eventually(lambda: station.status().spool_unconfirmed == 1, what="the batch marked sent")
        assert station.status().spool_depth == 1

        again = await backend.wait("sightings", 3)  # the timeout, then twice the timeout
        assert {SightingBatch.parse(p).batch_seq for p in again} == {seq}
        assert station.uplink.batches_resent >= 2

        await backend.confirm_seqs([seq])
        await eventually(lambda: station.status().spool_depth == 0, what="the confirmed batch gone")
        sent = len(backend.of("sightings"))
        await asyncio.sleep(2.5)  # longer than the next resend would have waited
        assert len(backend.of("sightings")) == sent
        assert (station.uplink.batches_confirmed, station.uplink.sightings_confirmed) == (1, 1)
        assert station.status().spool_unconfirmed == 0


async def test_a_repeated_batch_confirmed_again_leaves_the_spool(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    settings = fast_settings(
        topic_prefix, module.path, broker.url, tmp_path / "s.spool", passage_gap_s=0.2, confirm_timeout_s=0.3
    )
    async with watching(broker, topic_prefix, confirm=False) as backend, running(Station(settings)) as station:
        module.send(beacon(0x78))
        [first] = await backend.wait("sightings")
        seq = SightingBatch.parse(first).batch_seq
        # The first confirmation went to nobody (say, published while the station was away): lost.
        await backend.wait("sightings", 2)
        await backend.confirm_seqs([seq])  # the backend confirms the repeat as well
        await eventually(lambda: station.status().spool_depth == 0, what="the repeat confirmed")


async def test_a_new_connection_sends_every_unconfirmed_batch_again_at_once(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path, hop: TcpHop
) -> None:
    # A broker that acknowledged a batch and then lost it (a restart without persistence): only the
    # reconnection tells the station, and it does not wait for the (long) confirmation timeout.
    settings = fast_settings(
        topic_prefix, module.path, hop.url, tmp_path / "s.spool", passage_gap_s=0.2, confirm_timeout_s=600
    )
    await hop.open()
    async with watching(broker, topic_prefix, confirm=False) as backend, running(Station(settings)) as station:
        module.send(beacon(0x79))
        [first] = await backend.wait("sightings")
        await eventually(lambda: station.status().spool_unconfirmed == 1, what="the batch marked sent")
        assert station.uplink is not None
        connects = station.uplink.connects

        await hop.cut()
        await hop.open()
        await eventually(lambda: station.uplink is not None and station.uplink.connects > connects, what="reconnected")

        [_, again] = await backend.wait("sightings", 2)
        assert SightingBatch.parse(again).batch_seq == SightingBatch.parse(first).batch_seq
        await backend.confirm_seqs([SightingBatch.parse(first).batch_seq])
        await eventually(lambda: station.status().spool_depth == 0, what="the confirmed batch gone")


async def test_a_confirmation_that_is_malformed_or_names_another_station_is_counted_and_confirms_nothing(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    settings = fast_settings(
        topic_prefix, module.path, broker.url, tmp_path / "s.spool", passage_gap_s=0.2, confirm_timeout_s=600
    )
    async with watching(broker, topic_prefix, confirm=False) as backend, running(Station(settings)) as station:
        module.send(beacon(0x7A))
        [raw] = await backend.wait("sightings")
        seq = SightingBatch.parse(raw).batch_seq
        await eventually(lambda: station.status().spool_unconfirmed == 1, what="the batch marked sent")
        other = Confirmation(station_id="other-station", batch_seqs=[seq], sent_at=utcnow())
        async with mqtt_client(broker) as attacker:
            for payload in [b"{not json", b'{"v": 1, "batch_seqs": [' + str(seq).encode() + b"]}", other.to_json()]:
                await attacker.publish(confirmations_topic(topic_prefix), payload, qos=1)
        assert station.uplink is not None
        await eventually(lambda: station.uplink is not None and station.uplink.confirmations_rejected == 3)
        assert station.status().spool_depth == 1
