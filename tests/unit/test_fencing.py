"""The storage lease without Ray: one registry writes to one storage at a time."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import fsspec
import pytest

from raybeam.errors import StorageInUse
from raybeam.fencing import StorageLease
from raybeam.journal import GroupCommit, Journal


def lease(root: Path, cluster: str, incarnation: str = "i1") -> StorageLease:
    return StorageLease(fsspec.filesystem("file"), str(root), cluster, incarnation, seconds=30)


def test_another_cluster_is_refused_until_the_lease_expires(tmp_path: Path) -> None:
    a, b = lease(tmp_path, "cluster-a"), lease(tmp_path, "cluster-b")
    a.acquire(now=1000.0)
    assert a.held and a.epoch == 1
    with pytest.raises(StorageInUse, match="cluster-a/i1"):
        b.acquire(now=1010.0)
    assert a.renew(now=1020.0)  # renewed: expires at 1050 now
    with pytest.raises(StorageInUse):
        b.acquire(now=1049.0)
    b.acquire(now=1051.0)  # expired: b takes it, a later epoch
    assert b.held and b.epoch == 2
    assert not a.renew(now=1052.0) and not a.held  # a finds it taken and stops


def test_the_same_cluster_takes_its_lease_back_at_once(tmp_path: Path) -> None:
    first = lease(tmp_path, "cluster-a", "i1")
    first.acquire(now=1000.0)
    restarted = lease(tmp_path, "cluster-a", "i2")
    restarted.acquire(now=1001.0)  # a registry restarted in the same Ray cluster
    assert restarted.held and restarted.epoch == 2
    assert not first.renew(now=1002.0)


def test_a_fenced_registry_writes_nothing(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    journal = Journal(fs, str(tmp_path / "registry"), fsync=False)
    held = [True]

    async def scenario() -> None:
        commits = GroupCommit(journal, lambda: [], lambda: 0)
        commits.allowed = lambda: held[0]
        runner = asyncio.get_running_loop().create_task(commits.run())
        commits.stage("task", "a", 1)
        await commits.commit()
        held[0] = False
        commits.stage("task", "b", 2)
        with pytest.raises(StorageInUse):
            await commits.commit()
        runner.cancel()

    asyncio.run(scenario())
    state, _ = Journal(fs, str(tmp_path / "registry"), fsync=False).load()
    assert state == {("task", "a"): 1}


def test_a_holder_writes_only_while_its_lease_is_current(tmp_path: Path) -> None:
    a = lease(tmp_path, "cluster-a")
    a.acquire()
    assert a.current()
    a.acquire(now=time.time() - 30)  # as if its last renewal was 30 s ago: lapsed
    assert a.held and not a.current()  # no one took it, yet it must not write
    assert a.renew() and a.current()  # a renewal that finds it still its own goes on
    b = lease(tmp_path, "cluster-b")
    b.acquire(now=a.valid_until + 30)  # expired by b's clock: taken
    assert not a.renew() and not a.current() and a.taken_by == "cluster-b/i1"


def test_a_renewal_that_a_taker_overwrites_is_found_out(tmp_path: Path) -> None:
    a, b = lease(tmp_path, "cluster-a"), lease(tmp_path, "cluster-b")
    a.acquire(now=1000.0)
    written = a._write

    def then_taken(now: float) -> None:  # b takes the lease between a's write and read-back
        written(now)
        b.acquire(now=now + 100)

    a._write = then_taken  # type: ignore[method-assign]
    assert not a.renew() and not a.held and a.taken_by == "cluster-b/i1"


def test_a_reader_never_finds_a_renewal_half_written(tmp_path: Path) -> None:
    a, b = lease(tmp_path, "cluster-a"), lease(tmp_path, "cluster-b")
    a.acquire()
    stop = threading.Event()

    def renew() -> None:
        while not stop.is_set():
            a.renew()

    renewer = threading.Thread(target=renew)
    renewer.start()
    try:
        for _ in range(2000):  # a torn lease would read as free, and b would take it
            assert b.read() is not None
    finally:
        stop.set()
        renewer.join(10)


def test_a_lapsed_lease_holds_batches_back_until_it_is_renewed(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    journal = Journal(fs, str(tmp_path / "registry"), fsync=False)
    current = [False]

    async def scenario() -> None:
        commits = GroupCommit(journal, lambda: [], lambda: 0)
        commits.current = lambda: current[0]
        runner = asyncio.get_running_loop().create_task(commits.run())
        commits.stage("task", "a", 1)
        committed = asyncio.ensure_future(commits.commit())
        await asyncio.sleep(0.3)
        assert not committed.done() and commits.pending("task", "a")
        current[0] = True
        await asyncio.wait_for(committed, 5)
        runner.cancel()

    asyncio.run(scenario())
    state, _ = Journal(fs, str(tmp_path / "registry")).load()
    assert list(state) == [("task", "a")]
