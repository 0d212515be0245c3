"""The selftest topic's messages: a step begun, a step and a run's summary, told apart by `kind`, round trip byte for
byte."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.messages import MessageError, SelfTestStep, SelfTestStepStarted, SelfTestSummary, parse_selftest
from protocol.topics import SELFTEST, STATION_KINDS, parse_station_topic, station_filter, station_topic

STEP = (
    b'{"v":1,"kind":"step","station_id":"st-001","run_id":"5f0c2a9e1b7d4c36","seq":4,"name":"test_tag",'
    b'"title":"test tag is read","status":"warn","message":"0A1B2C3D at -82 dBm on antenna 0 after 2.4 s (1 beacon)",'
    b'"advice":"weak signal: check the coax connector on antenna port 0","rssi_dbm":-82,"noise_floor_dbm":null,'
    b'"elapsed_s":2.41,"at":"2025-06-02T08:14:03.500000Z"}'
)
SUMMARY = (
    b'{"v":1,"kind":"summary","station_id":"st-001","run_id":"5f0c2a9e1b7d4c36","seq":9,"result":"passed",'
    b'"steps":8,"counts":{"pass":6,"warn":1,"skip":1},"started_at":"2025-06-02T08:13:50Z",'
    b'"finished_at":"2025-06-02T08:14:09.250000Z"}'
)

STARTED = (
    b'{"v":1,"kind":"started","station_id":"st-001","run_id":"5f0c2a9e1b7d4c36","seq":4,"name":"test_tag",'
    b'"title":"test tag is read","wait_s":30.0,"at":"2025-06-02T08:14:01.100000Z"}'
)


def test_a_step_begun_parses_by_kind_round_trips_and_is_checked_like_a_step() -> None:
    started = parse_selftest(STARTED)
    assert isinstance(started, SelfTestStepStarted)
    assert (started.seq, started.name, started.wait_s) == (4, "test_tag", 30.0)
    assert started.to_json() == STARTED
    # Only station_id, run_id, seq, name and at are needed: a step that does not wait says nothing of waiting.
    bare = parse_selftest(
        b'{"v":1,"kind":"started","station_id":"st-001","run_id":"5f0c2a9e1b7d4c36","seq":1,"name":"serial",'
        b'"at":"2025-06-02T08:13:50Z"}'
    )
    assert isinstance(bare, SelfTestStepStarted) and (bare.title, bare.wait_s) == ("", None)
    for change, reason in [
        ({"wait_s": -1}, "started.wait_s: Input should be greater than or equal to 0"),
        ({"name": "Test Tag"}, "started.name: String should match pattern"),
        ({"seq": 100}, "started.seq: Input should be less than or equal to 99"),
    ]:
        with pytest.raises(MessageError) as caught:
            parse_selftest(orjson.dumps({**orjson.loads(STARTED), **change}))
        assert reason in caught.value.reason


def test_selftest_is_a_station_topic_kind_the_ingest_subscribes_to() -> None:
    assert SELFTEST in STATION_KINDS
    assert station_topic("st-001", SELFTEST) == "bikeguard/v1/stations/st-001/selftest"
    assert parse_station_topic("bikeguard/v1/stations/st-001/selftest").kind == "selftest"
    assert station_filter(SELFTEST, "g") == "$share/g/bikeguard/v1/stations/+/selftest"


def test_step_and_summary_parse_by_kind_and_round_trip_byte_for_byte() -> None:
    step = parse_selftest(STEP)
    assert isinstance(step, SelfTestStep)
    assert (step.seq, step.name, step.status, step.rssi_dbm, step.noise_floor_dbm) == (4, "test_tag", "warn", -82, None)
    assert step.at == datetime(2025, 6, 2, 8, 14, 3, 500000, tzinfo=UTC)
    assert step.to_json() == STEP
    summary = parse_selftest(SUMMARY)
    assert isinstance(summary, SelfTestSummary)
    assert (summary.result, summary.steps, summary.counts) == ("passed", 8, {"pass": 6, "warn": 1, "skip": 1})
    assert summary.to_json() == SUMMARY


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": None}, "v: Field required"),
        ({"v": 2}, "step.v: Input should be 1"),
        ({"kind": "verdict"}, "payload: Input tag 'verdict' found using 'kind' does not match"),
        ({"kind": None}, "payload: Unable to extract tag using discriminator 'kind'"),
        ({"run_id": "not hex!"}, "step.run_id: String should match pattern"),
        ({"seq": 0}, "step.seq: Input should be greater than or equal to 1"),
        ({"status": "ok"}, "step.status: Input should be 'pass', 'warn', 'fail' or 'skip'"),
        ({"at": "2025-06-02T08:14:03"}, "step.at: Input should have timezone info"),
        ({"advice": "x" * 2001}, "step.advice: String should have at most 2000 characters"),
    ],
)
def test_invalid_step_is_refused_with_the_reason_and_the_raw_bytes(change: dict[str, object], reason: str) -> None:
    payload = orjson.loads(STEP)
    for key, value in change.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    raw = orjson.dumps(payload)
    with pytest.raises(MessageError) as caught:
        parse_selftest(raw)
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert caught.value.raw == raw


def test_summary_must_follow_its_steps_and_count_them_all() -> None:
    payload = orjson.loads(SUMMARY)
    with pytest.raises(MessageError, match="seq 8 must follow the last step's"):
        parse_selftest(orjson.dumps({**payload, "seq": 8}))
    with pytest.raises(MessageError, match="counts add up to 7, not to the 8 steps"):
        parse_selftest(orjson.dumps({**payload, "counts": {"pass": 7}}))


@given(
    seq=st.integers(1, 99),
    status=st.sampled_from(["pass", "warn", "fail", "skip"]),
    message=st.text(max_size=300),
    rssi=st.none() | st.integers(-128, 127),
    at=st.datetimes(timezones=st.just(UTC)),
)
def test_any_step_round_trips(seq: int, status: str, message: str, rssi: int | None, at: datetime) -> None:
    step = SelfTestStep(
        station_id="st-9",
        run_id="00ff00ff",
        seq=seq,
        name="noise",
        status=status,  # type: ignore[arg-type]
        message=message,
        rssi_dbm=rssi,
        at=at,
    )
    assert parse_selftest(step.to_json()) == step


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_parser(raw: bytes) -> None:
    try:
        parse_selftest(raw)
    except MessageError as exc:
        assert exc.raw == raw
