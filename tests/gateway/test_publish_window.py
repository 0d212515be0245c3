"""The uplink's publish window: how many messages fly at once, what is acknowledged, what goes again."""

from __future__ import annotations

import pytest

from gateway.publish_window import PublishWindow
from gateway.spool import Entry, Priority


def entries(*ids: int, priority: Priority = Priority.SIGHTINGS) -> list[Entry]:
    """Spooled messages with these ids, in this order."""
    return [Entry(i, priority, "t", f"m{i}".encode(), 1) for i in ids]


def ids(sent: list[Entry]) -> list[int]:
    return [e.id for e in sent]


def test_no_more_than_the_window_flies_and_each_puback_lets_the_next_one_go() -> None:
    window = PublishWindow(3)
    assert window.needs_reading(spooled=False)  # nothing read yet
    window.read(entries(1, 2, 3, 4, 5))
    assert ids(window.send()) == [1, 2, 3]
    assert not window.has_room and window.send() == []
    assert not window.needs_reading(spooled=True)  # full: nothing to read for

    window.acknowledge(entries(2)[0])  # PUBACKs may come out of order
    assert ids(window.send()) == [4]
    assert ids(window.in_flight) == [1, 3, 4]


def test_acknowledged_messages_are_deleted_in_groups_of_half_a_window_or_when_nothing_flies() -> None:
    window = PublishWindow(4)
    window.read(entries(1, 2, 3, 4))
    sent = window.send()
    window.acknowledge(sent[0])
    assert window.take_acknowledged() == []  # one of four: wait for more
    window.acknowledge(sent[1])
    assert ids(window.take_acknowledged()) == [1, 2]
    window.acknowledge(sent[2])
    assert window.take_acknowledged() == []
    assert ids(window.take_acknowledged(all_now=True)) == [3]  # the connection ends
    window.acknowledge(sent[3])
    assert ids(window.take_acknowledged()) == [4]  # nothing else in flight


def test_reading_again_skips_what_is_in_flight_or_acknowledged_and_lets_a_new_alert_go_first() -> None:
    window = PublishWindow(2, read_ahead=2)
    window.read(entries(1, 2, 3, 4, 5))
    sent = window.send()
    window.acknowledge(sent[0])
    assert window.needs_reading(spooled=True)  # an alert was spooled meanwhile
    assert window.read_limit == 2 * 2 + 2  # read ahead, plus what the spool still holds of ours
    alert = entries(9, priority=Priority.ALERT)
    window.read(alert + entries(1, 2, 3, 4, 5))  # the spool's send order: alerts first
    assert ids(window.send()) == [9]
    window.acknowledge(sent[1])
    assert ids(window.send()) == [3]


def test_a_message_acknowledged_twice_or_never_sent_counts_once() -> None:
    window = PublishWindow(2)
    window.read(entries(1, 2))
    first, _ = window.send()
    window.acknowledge(first)
    window.acknowledge(first)
    window.acknowledge(entries(7)[0])
    assert ids(window.take_acknowledged(all_now=True)) == [1]


def test_after_a_lost_connection_what_had_no_puback_goes_again_first() -> None:
    window = PublishWindow(3)
    spool = entries(1, 2, 3, 4, 5)
    window.read(spool)
    sent = window.send()
    window.acknowledge(sent[0])
    acked = window.take_acknowledged(all_now=True)
    assert ids(window.lost()) == [2, 3]
    assert window.in_flight == [] and window.has_room and window.needs_reading(spooled=False)

    still_spooled = [e for e in spool if e not in acked]  # nothing unacknowledged left the spool
    window.read(still_spooled)
    assert ids(window.send()) == [2, 3, 4]


def test_a_window_holds_at_least_one_message() -> None:
    with pytest.raises(ValueError, match="at least one"):
        PublishWindow(0)
