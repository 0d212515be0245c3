"""Resolution of v2 beacons in the backend: ephemeral ids → chips, MAC and counter checks, window splits joined.

Stations never see any of this: they hold no chip keys and aggregate by ephemeral id; only the backend, which holds
the keys (backend.chip_keys), can tell which chip sent a beacon (docs/architecture.md, "Resolving v2 beacons").
"""

from backend.resolution.evidence import CloneEvidence, Hearing, Verdict
from backend.resolution.passages import join_window_splits
from backend.resolution.resolver import ChipState, Prepared, Resolution, Resolver
from backend.resolution.table import Candidate, ResolutionError, ResolutionTable, TableKeyError, WindowRangeError

__all__ = [
    "Candidate",
    "ChipState",
    "CloneEvidence",
    "Hearing",
    "Prepared",
    "Resolution",
    "ResolutionError",
    "ResolutionTable",
    "Resolver",
    "TableKeyError",
    "Verdict",
    "WindowRangeError",
    "join_window_splits",
]
