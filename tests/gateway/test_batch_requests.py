"""A backend's request for batches it is missing: the station sends again at once the ones it still holds and
answers which it no longer holds and why; a malformed request is counted and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bikeguard.services import Broker
from gateway.station import Station
from protocol.messages import BatchesGone, BatchRequest, SeqRange, SightingBatch, utcnow
from protocol.topics import requests_topic
from tests.gateway.harness import FakeModule, beacon, eventually, fast_settings, running, watching

pytestmark = pytest.mark.anyio


async def test_a_requested_batch_still_spooled_goes_again_at_once_and_the_rest_are_answered_as_gone(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    # Without the request the unconfirmed batch would wait ten minutes for its next resend.
    settings = fast_settings(
        topic_prefix, module.path, broker.url, tmp_path / "s.spool", passage_gap_s=0.2, confirm_timeout_s=600
    )
    async with watching(broker, topic_prefix, confirm=False) as backend, running(Station(settings)) as station:
        module.send(beacon(0x81))
        await backend.wait("sightings")
        module.send(beacon(0x82))
        await backend.wait("sightings", 2)
        s0, s1 = (SightingBatch.parse(p).batch_seq for p in backend.of("sightings"))
        assert s1 == s0 + 1  # the spool's first is the clock in milliseconds
        await eventually(lambda: station.status().spool_unconfirmed == 2, what="both batches marked sent")
        await backend.confirm_seqs([s0])
        await eventually(lambda: station.status().spool_depth == 1, what="the first batch confirmed")

        ranges = [SeqRange(first=s0 - 3, last=s1), SeqRange(first=s1 + 4, last=s1 + 5)]
        request = BatchRequest(station_id=topic_prefix, ranges=ranges, sent_at=utcnow())
        await backend.client.publish(requests_topic(topic_prefix), request.to_json(), qos=1)

        again = await backend.wait("sightings", 3)
        assert SightingBatch.parse(again[2]).batch_seq == s1
        [answer] = await backend.wait("gone")
        gone = BatchesGone.parse(answer)
        assert [(r.first, r.last, r.reason) for r in gone.ranges] == [
            (s0 - 3, s0 - 1, "not_issued"),  # before this spool's first
            (s0, s0, "not_held"),  # confirmed, so gone
            (s1 + 4, s1 + 5, "not_issued"),  # yet to come
        ]
        assert (gone.station_id, gone.next_batch_seq) == (topic_prefix, s1 + 1)
        assert station.uplink is not None
        assert (station.uplink.requests, station.uplink.batches_requested_held) == (1, 1)
        assert station.uplink.batches_requested_gone == 6


async def test_a_malformed_or_misaddressed_request_is_counted_and_changes_nothing(
    broker: Broker, module: FakeModule, topic_prefix: str, tmp_path: Path
) -> None:
    settings = fast_settings(
        topic_prefix, module.path, broker.url, tmp_path / "s.spool", passage_gap_s=0.2, confirm_timeout_s=600
    )
    async with watching(broker, topic_prefix, confirm=False) as backend, running(Station(settings)) as station:
        module.send(beacon(0x83))
        await backend.wait("sightings")
        await eventually(lambda: station.status().spool_unconfirmed == 1, what="the batch marked sent")
        topic = requests_topic(topic_prefix)
        await backend.client.publish(topic, b'{"v": 1, "station_id": "x", "ranges": []}', qos=1)
        await backend.client.publish(topic, b"\x00garbage", qos=1)
        other = BatchRequest(station_id="someone-else", ranges=[SeqRange(first=0, last=0)], sent_at=utcnow())
        await backend.client.publish(topic, other.to_json(), qos=1)
        assert station.uplink is not None
        uplink = station.uplink
        await eventually(lambda: uplink.requests_rejected == 3, what="three refusals")
        assert uplink.requests == 0 and backend.of("gone") == [] and len(backend.of("sightings")) == 1

        # The station still answers a good request.
        seq = SightingBatch.parse(backend.of("sightings")[0]).batch_seq
        good = BatchRequest(station_id=topic_prefix, ranges=[SeqRange(first=seq, last=seq)], sent_at=utcnow())
        await backend.client.publish(topic, good.to_json(), qos=1)
        await backend.wait("sightings", 2)
