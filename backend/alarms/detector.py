"""What a detector is: a function from committed passages (and the watch list) to evidence of one alarm kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from backend.alarms.evidence import Committed, Evidence
from backend.alarms.kinds import AlarmKind
from backend.alarms.watch_list import WatchList

# (a cursor in the detection transaction, what was committed, the watch list) -> evidence. Most detectors judge
# in memory and ignore the cursor; one that needs more than the passages (positions, station coordinates) reads
# through it.
Detect = Callable[[psycopg.Cursor[Any], Committed, WatchList], list[Evidence]]


@dataclass(frozen=True, slots=True)
class Detector:
    """One alarm kind's detector."""

    kind: AlarmKind
    detect: Detect
    # Whether it reads the watch list (loaded once per round, only when a detector of the round needs it).
    watches: bool = False
