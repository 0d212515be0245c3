"""The storage engine the suite runs on: plain PostgreSQL, or TimescaleDB with BIKEGUARD_TEST_TIMESCALEDB=1
(installed into the embedded PostgreSQL with ../shared/timescaledb/install; CI runs the suite on both)."""

from __future__ import annotations

import os

from backend.db.storage import Engine, StoragePolicy
from bikeguard.services import engine_preload

ENGINE: Engine = "timescaledb" if os.environ.get("BIKEGUARD_TEST_TIMESCALEDB") == "1" else "postgresql"
STORAGE = StoragePolicy(ENGINE)
# What the embedded server must preload for it.
PRELOAD = engine_preload(ENGINE)
