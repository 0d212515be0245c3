"""A mobile reader's GPS side: NMEA sentences (literal golden lines), the receiver on a real pty, positions on
sightings, and bad sentences counted without stopping anything."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime, timedelta

import pynmea2
import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.gps import Route, SimulatedGps, gga, rmc, sentence, town_route
from firmware_sim.town import Town
from gateway.aggregator import Aggregator
from gateway.gps import Fix, Gps, GpsError, read_fix
from gateway.hotlist import HotList
from protocol.frames import Beacon, TagFlags
from protocol.messages import ReaderPosition

AT = datetime(2026, 11, 29, 14, 2, 7, 500000, tzinfo=UTC)


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dy = (b[0] - a[0]) * 111_320
    dx = (b[1] - a[1]) * 111_320 * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy)


def test_rmc_and_gga_golden_lines_give_the_fix_and_its_time() -> None:
    # Literal lines as a receiver writes them (XOR of the bytes between $ and *; pynmea2 checks them).
    rmc_line = "$GPRMC,140207.50,A,3016.4474,N,12009.3592,E,12.3,84.0,291126,,,A*58"
    gga_line = "$GNGGA,140207.50,3016.4474,N,12009.3592,E,1,08,0.9,12.0,M,7.0,M,,*72"
    for line in (rmc_line, gga_line):
        fix = read_fix(line, AT)
        assert isinstance(fix, Fix), (line, fix)
        assert abs(fix.lat - 30.274123) < 1e-6 and abs(fix.lon - 120.155987) < 1e-6
        assert fix.fix_at == AT.replace(microsecond=500000)


def test_sentences_without_a_fix_with_a_bad_checksum_or_unparsable_are_refused_by_reason() -> None:
    assert read_fix("$GPRMC,140207.50,V,,,,,,,291126,,,N*77", AT) == "no_fix"
    assert read_fix("$GPGGA,140207.50,,,,,0,00,99.9,,M,,M,,*5A", AT) == "no_fix"
    assert read_fix("$GPRMC,140207.50,A,3016.4474,N,12009.3592,E,12.3,84.0,291126,,,A*00", AT) == "checksum"
    assert read_fix("$GPRMC,140207.50,A,3016.4474,N,12009.3592,E,12.3,84.0,291126,,,A", AT) == "checksum"
    assert read_fix("\x00\xffnot nmea at all", AT) == "unparsable"
    assert read_fix(sentence("GPGGA,140207.50,30xx.4474,N,12009.3592,E,1,08,0.9,12.0,M,7.0,M,,").decode(), AT) == (
        "unparsable"
    )
    # A valid sentence that is no fix (satellites in view) is neither a fix nor an error.
    assert read_fix(sentence("GPGSV,1,1,01,12,45,180,38").decode(), AT) is None


def test_gga_just_before_midnight_received_just_after_is_dated_the_day_before() -> None:
    received = datetime(2026, 11, 30, 0, 0, 1, tzinfo=UTC)
    fix = read_fix(gga(30.27, 120.15, datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC)).decode(), received)
    assert isinstance(fix, Fix) and fix.fix_at == datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC)


def test_simulated_receiver_writes_lines_pynmea2_checks_and_reads_back() -> None:
    for lat, lon in ((30.274123, 120.155987), (-33.9, -70.6), (0.0, -0.5)):
        for line in (rmc(lat, lon, AT, speed_mps=8.0, course_deg=271.5), gga(lat, lon, AT)):
            message = pynmea2.parse(line.decode().strip(), check=True)
            assert abs(message.latitude - lat) < 1e-5 and abs(message.longitude - lon) < 1e-5


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_on_the_gps_line_never_crash_and_are_counted_or_ignored(raw: bytes) -> None:
    gps = Gps("test://", clock=lambda: AT)
    gps.feed_line(raw)
    assert gps.fixes + gps.ignored + gps.rejected_total <= 1


def test_a_flipped_character_fails_the_checksum() -> None:
    line = rmc(30.274123, 120.155987, AT).decode().strip()
    flipped = line.replace("3016.4474", "3016.4475")
    assert read_fix(flipped, AT) == "checksum"


def test_position_at_is_the_latest_fix_only_while_it_is_fresh() -> None:
    now = [AT]
    gps = Gps("test://", fix_max_age_s=5.0, clock=lambda: now[0])
    assert gps.position_at(AT) is None
    gps.feed_line(rmc(30.27, 120.15, AT))
    assert gps.position_at(AT + timedelta(seconds=4)) == ReaderPosition(lat=30.27, lon=120.15, fix_at=AT)
    assert gps.position_at(AT + timedelta(seconds=6)) is None


def test_receiver_on_a_pty_follows_its_route_and_counts_bad_sentences() -> None:
    town = Town.generate(5, stations=6, bikes=0)
    route = Route(town_route(town, "st-001", "st-004"), speed_mps=20.0)
    with SimulatedGps(route, interval_s=0.1) as sim:
        gps = Gps(sim.port, fix_max_age_s=2.0)

        async def drive() -> list[tuple[ReaderPosition, tuple[float, float]]]:
            reader = asyncio.create_task(gps.run())
            seen: list[tuple[ReaderPosition, tuple[float, float]]] = []
            try:
                sim.start()
                deadline = time.monotonic() + 30
                while len(seen) < 10 and time.monotonic() < deadline:
                    await asyncio.sleep(0.25)
                    sim.send_raw(b"$GPRMC,garbage*00\r\n")  # a corrupted sentence between the good ones
                    at = gps.position_at(datetime.now(UTC))
                    if at is not None and (not seen or seen[-1][0] != at):
                        seen.append((at, sim.position()))
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            return seen

        seen = asyncio.run(drive())
    assert len(seen) >= 10, seen
    # Each fix is where the simulated car was (it moves 20 m/s; a fix is at most a few ticks old).
    for at, truth in seen:
        assert _metres((at.lat, at.lon), truth) < 20 * 0.5, (at, truth)
    # It moved along the route: the fixes are spread out, and all on the town's roads' route.
    assert _metres((seen[0][0].lat, seen[0][0].lon), (seen[-1][0].lat, seen[-1][0].lon)) > 20
    assert gps.rejected["checksum"] >= 5
    assert gps.fixes >= 10


def test_sightings_of_a_mobile_reader_carry_its_position_at_the_peak_beacon_and_without_a_fix_none() -> None:
    now = [AT]
    fixes: dict[datetime, ReaderPosition] = {}

    def locate(at: datetime) -> ReaderPosition | None:
        return fixes.get(at)

    aggregator = Aggregator("patrol-1", HotList(), passage_gap_s=2.0, clock=lambda: now[0], locate=locate)
    near = ReaderPosition(lat=30.2741, lon=120.1559, fix_at=AT + timedelta(seconds=1))
    fixes[AT] = ReaderPosition(lat=30.2730, lon=120.1550, fix_at=AT)
    fixes[AT + timedelta(seconds=1)] = near
    aggregator.add(Beacon(0x0A1B2C3D, 1, TagFlags(0), -80, 0), AT)
    aggregator.add(Beacon(0x0A1B2C3D, 2, TagFlags(0), -55, 0), AT + timedelta(seconds=1))  # nearest: strongest
    aggregator.add(Beacon(0x0A1B2C3D, 3, TagFlags(0), -70, 0), AT + timedelta(seconds=1.5))
    # A tag heard only while the receiver has no fix (a tunnel): its sighting goes without a position.
    aggregator.add(Beacon(0x0B000001, 1, TagFlags(0), -60, 1), AT + timedelta(seconds=0.5))
    closed = {s.tag_id: s for s in aggregator.close_all()}
    assert closed["0A1B2C3D"].position == near
    assert closed["0B000001"].position is None
    assert aggregator.sightings_without_fix == 1
    # On the wire: the position goes with the sighting; a sighting without one has no key at all.
    wire = closed["0B000001"].model_dump(mode="json", exclude_none=True)
    assert "position" not in wire


def test_a_fixed_station_counts_no_sightings_without_fix() -> None:
    aggregator = Aggregator("st-001", HotList(), clock=lambda: AT)
    aggregator.add(Beacon(0x0A1B2C3D, 1, TagFlags(0), -60, 0), AT)
    (sighting,) = aggregator.close_all()
    assert sighting.position is None and aggregator.sightings_without_fix == 0


def test_a_port_that_fails_to_open_is_retried_and_a_reader_that_dies_of_a_bug_stops_the_station() -> None:
    opened: list[str] = []

    def unplugged(url: str, **_: object) -> serial.SerialBase:
        opened.append(url)
        raise serial.SerialException(f"could not open port {url}")

    def buggy(url: str, **_: object) -> serial.SerialBase:
        raise RuntimeError("a bug in the port layer")

    async def run(gps: Gps, for_s: float) -> None:
        async with asyncio.timeout(for_s):
            await gps.run()

    with pytest.raises(TimeoutError):  # it keeps trying: an unplugged receiver is no reason to stop
        asyncio.run(run(Gps("/dev/gps-gone", reopen_min_s=0.05, reopen_max_s=0.1, open_port=unplugged), 1.0))
    assert len(opened) >= 3
    with pytest.raises(GpsError, match="reader thread died"):
        asyncio.run(run(Gps("/dev/gps-buggy", open_port=buggy), 10.0))
