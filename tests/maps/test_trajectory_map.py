"""A bike's trajectory on its own map: the summary handed to the replay script, no CDN, a view around it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from maps.assets import external_references
from maps.trajectory import build_trajectory_map

LOAD = re.compile(r"\breplay_\w+\.load\(")


def _loaded(html: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary and options the page hands to the replay."""
    (call,) = LOAD.finditer(html)
    decoder = json.JSONDecoder()
    summary, end = decoder.raw_decode(html, call.end())
    assert html[end : end + 2] == ", "
    options, _ = decoder.raw_decode(html, end + 2)
    return summary, options


def test_trajectory_map_hands_the_summary_to_the_shared_replay(
    town: dict[str, Any], trajectory_factory: Callable[..., Any]
) -> None:
    summary = trajectory_factory(town)

    html = build_trajectory_map(summary, town["roads"], stations=town["stations"]).get_root().render()

    assert external_references(html) == []
    assert "function bikeguardReplay(map, options)" in html and ".bg-replay-play" in html
    loaded, options = _loaded(html)
    assert loaded == json.loads(json.dumps(summary))
    assert options == {"title": "Bike 7"}
    assert "<title>Bikeguard — trajectory</title>" in html
    assert "fitBounds" in html


def test_a_chips_trajectory_is_titled_by_the_chip_and_names_cannot_break_out(town: dict[str, Any]) -> None:
    stop = {
        "station_id": "S-1",
        "station_name": "</script><script>alert(1)</script>",
        "lat": 30.27,
        "lon": 120.15,
        "arrived_at": "2025-01-01T08:00:00+00:00",
        "left_at": "2025-01-01T08:01:00+00:00",
        "dwell_s": 60.0,
        "passages": 1,
    }
    summary = {"bike_id": None, "tag_id": "0000BEEF", "stops": [stop], "legs": []}

    html = build_trajectory_map(summary).get_root().render()

    assert "<script>alert(1)" not in html
    assert _loaded(html)[1] == {"title": "Chip 0000BEEF"}
    assert _loaded(html)[0]["stops"][0]["station_name"] == stop["station_name"]


def test_an_empty_trajectory_still_builds_around_the_stations(town: dict[str, Any]) -> None:
    html = build_trajectory_map({"stops": [], "legs": []}, town["roads"], stations=town["stations"]).get_root().render()

    assert _loaded(html)[0] == {"stops": [], "legs": []}
    assert "fitBounds" in html
