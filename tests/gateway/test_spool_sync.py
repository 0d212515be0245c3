"""gateway.spool_sync: many stations' spools committed without an fsync each, then synced to disk together before
anything relies on them."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

import gateway.spool_sync
from gateway.spool import Spool
from gateway.spool_sync import SpoolSync, sync_spool_file, sync_spools
from tests.gateway.harness import eventually

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def running(sync: SpoolSync) -> AsyncIterator[SpoolSync]:
    task = asyncio.create_task(sync.run())
    try:
        yield sync
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_a_spool_without_fsync_commits_normal_throughout(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool", fsync=False)
    spool.put_sightings("sightings", lambda seq: b"batch %d" % seq, 1)
    spool.mark_sent(spool.peek(1), timeout_s=10, max_s=60)
    spool.confirm([0])
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: the WAL is written, not synced
    spool.close()


def test_syncing_a_spool_fsyncs_its_wal_and_a_spool_without_one_has_nothing_pending(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, fsync=False)
    spool.put_alert("alerts", b"x")
    assert os.path.getsize(f"{path}-wal") > 0
    sync_spool_file(path)  # the real fsync of the real file
    spool.close()  # the last connection checkpoints and removes the WAL
    sync_spool_file(path)
    sync_spool_file(tmp_path / "never.spool")


def test_a_pass_syncs_the_spools_filesystem_at_once_and_a_spool_it_cannot_sync_fails(tmp_path: Path) -> None:
    assert gateway.spool_sync._SYNCFS is not None, "Linux has syncfs: the bridge's passes use it"
    spools = [Spool(tmp_path / f"{name}.spool", fsync=False) for name in ("a", "b")]
    for spool in spools:
        spool.put_alert("alerts", b"x")
    assert sync_spools([s.path for s in spools]) == set()
    gone = tmp_path / "gone" / "c.spool"  # its directory is not there: nothing can be said to be on disk
    assert sync_spools([spools[0].path, gone]) == {gone}
    for spool in spools:
        spool.close()


def test_without_syncfs_each_spools_wal_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway.spool_sync, "_SYNCFS", None)  # as on a system without it (not Linux)
    synced: list[Path] = []
    monkeypatch.setattr(gateway.spool_sync, "sync_spool_file", synced.append)
    paths = [tmp_path / "a.spool", tmp_path / "b.spool"]
    assert sync_spools(paths) == set()
    assert synced == paths


async def test_what_waits_on_a_spool_runs_only_after_a_pass_synced_it(tmp_path: Path) -> None:
    synced: list[Path] = []
    ran: list[str] = []

    def sync(paths: Sequence[Path]) -> set[Path]:
        assert not ran, "something ran before its spool was synced"
        synced.extend(paths)
        return set()

    a, b = tmp_path / "a.spool", tmp_path / "b.spool"
    async with running(SpoolSync(sync)) as spool_sync:
        spool_sync.after(a, lambda: ran.append("a1"))
        spool_sync.after(b, lambda: ran.append("b"))
        spool_sync.after(a, lambda: ran.append("a2"))
        await eventually(lambda: len(ran) == 3, what="everything that waited")
    assert sorted(synced) == [a, b]  # one sync per spool, whatever waited on it
    assert sorted(ran) == ["a1", "a2", "b"]
    assert spool_sync.files_synced == 2 and spool_sync.passes >= 1


async def test_a_spool_that_cannot_be_synced_runs_nothing_of_its_own_and_the_others_go_on(tmp_path: Path) -> None:
    bad, worse, good = tmp_path / "bad.spool", tmp_path / "worse.spool", tmp_path / "good.spool"
    ran: list[str] = []

    def sync(paths: Sequence[Path]) -> set[Path]:
        if worse in paths:
            raise RuntimeError("a bug in the pass")
        return {bad} & set(paths)  # the disk would not take it

    async with running(SpoolSync(sync)) as spool_sync:
        spool_sync.after(bad, lambda: ran.append("bad"))
        spool_sync.after(good, lambda: ran.append("good"))
        await eventually(lambda: ran == ["good"] and spool_sync.errors == 1, what="the good spool's waiter")
        spool_sync.after(worse, lambda: ran.append("worse"))
        spool_sync.after(good, lambda: ran.append("good with worse"))  # the same pass as worse: fails with it
        await eventually(lambda: spool_sync.errors == 3, what="the failed pass")
        spool_sync.after(good, lambda: ran.append("good again"))  # a later pass still works
        await eventually(lambda: ran == ["good", "good again"], what="the next pass")
    assert "bad" not in ran and "worse" not in ran and "good with worse" not in ran
