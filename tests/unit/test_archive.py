"""The archive (SPEC §11) without Ray: a real journal and Parquet files on a temp folder."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from raybeam.archive import Archive
from raybeam.core import RegistryCore
from raybeam.errors import TaskNotFound
from raybeam.intake import Intake
from raybeam.middleware.retention import Retention
from raybeam.reads import Reads
from raybeam.record import TaskStatus
from raybeam.wire import failed, succeeded
from tests.support.cores import definition, dispatched, make_core, run

pytestmark = pytest.mark.timeout(60)
S = TaskStatus


def uid(n: int) -> str:
    return str(uuid.UUID(int=(n * 0x9E3779B97F4A7C15) % 2**128))


async def fill(core: RegistryCore, queue: str, ids: list[str], value: Any = None) -> None:
    """Submit `ids` to `queue` and complete them (FAILED for ids at odd positions)."""
    intake = Intake(core)
    if queue not in core.queues:
        await intake.register_queue(definition(queue, cap=100_000, retries=0), b"blob")
    for start in range(0, len(ids), 500):
        await intake.submit(
            queue,
            [{"id": t, "payload": f"p-{t}", "overrides": {}} for t in ids[start : start + 500]],
        )
    sent = dict(dispatched(core).submitted)
    for n, t in enumerate(ids):
        if n % 2:
            await core.settle(t, sent[t], failed("boom", retryable=False))
        else:
            await core.settle(t, sent[t], succeeded(value if value is not None else {"n": n}, []))
    await asyncio.sleep(0)  # the failed ones' final hooks run, then all is stored
    await Reads(core).committed(core.tasks.values())


async def archive_all(core: RegistryCore) -> int:
    moved = 0
    while n := await core.archive_ended(-1.0):
        moved += n
    return moved


async def list_all(reads: Reads, queue: str | None, status: str | None, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await reads.list(queue, status, limit, cursor)
        seen += [r["id"] for r in page]
        if cursor is None:
            return seen


def test_archived_tasks_read_the_same_and_leave_memory_and_the_journal(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(40)]

    async def scenario(core: RegistryCore) -> None:
        reads = Reads(core)
        await fill(core, "q", ids)
        before = {t: await reads.get(t) for t in ids}
        results = {t: (await reads.wait_final(t, 1)) for t in ids}
        history = {t: await reads.history(t) for t in ids}
        stats = reads.queue_stats()
        assert await archive_all(core) == 40
        assert not core.tasks and not core.payloads
        for t in ids:
            assert await reads.get(t) == before[t]
            assert await reads.wait_final(t, 1) == results[t]
            assert await reads.history(t) == history[t]
            assert (await reads.watch(t, "PENDING", 1))["status"] == before[t]["status"]
        assert await reads.statuses(ids) == {t: before[t]["status"] for t in ids}
        assert await reads.exists([ids[0], uid(999)]) == [True, False]
        assert reads.queue_stats() == stats  # counters, the archived ones included
        assert await reads.get("not-a-uuid") is None

    run(tmp_path, scenario)
    names = sorted(p.name for p in (tmp_path / "storage" / "registry" / "archive").iterdir())
    assert names == ["0000000000000001.index.parquet", "0000000000000001.parquet"]
    for name in names:  # the data, and its index for restarts
        assert pq.read_metadata(tmp_path / "storage" / "registry" / "archive" / name).num_rows == 40


def test_a_restart_reads_only_live_state_and_the_archive_index(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(30)]
    live_ids = [uid(n) for n in range(100, 105)]

    async def first(core: RegistryCore) -> None:
        await fill(core, "q", ids)
        assert await archive_all(core) == 30
        await Intake(core).submit(
            "q", [{"id": t, "payload": "p", "overrides": {}} for t in live_ids]
        )
        # a snapshot now holds the live tasks only
        await core.commits._compact()

    run(tmp_path, first)
    snapshot = next((tmp_path / "storage" / "registry" / "snapshot").glob("*.json")).read_text()
    assert all(t not in snapshot for t in ids) and all(t in snapshot for t in live_ids)

    async def second(core: RegistryCore) -> None:
        reads = Reads(core)
        assert sorted(core.tasks) == sorted(live_ids)
        assert len(core.archive) == 30
        got = await reads.get(ids[3])
        assert got is not None and got["status"] == "FAILED"
        assert reads.queue_stats()["q"]["by_status"] == {"COMPLETE": 15, "FAILED": 15, "PENDING": 5}

    run(tmp_path, second)


def test_listing_crosses_live_and_archived_pages_without_gaps_or_duplicates(tmp_path: Path) -> None:
    async def scenario(core: RegistryCore) -> None:
        reads = Reads(core)
        ids = []
        for batch in range(4):  # four batches, each a file once archived
            made = [uid(batch * 1000 + n) for n in range(25)]
            await fill(core, "q" if batch % 2 else "other", made)
            ids += made
            if batch < 3:
                await archive_all(core)
            time.sleep(0.01)  # a new creation time per batch
        assert len(core.archive.files) == 3 and len(core.tasks) == 25
        expected = [r["id"] for r in (await reads.list(None, None, 1000, None))[0]]
        assert sorted(expected) == sorted(ids)
        for limit in (1, 7, 25, 60):
            assert await list_all(reads, None, None, limit) == expected
        failed_q = [t for t in expected if (await reads.get(t))["status"] == "FAILED"]
        failed_q = [t for t in failed_q if (await reads.get(t))["queue"] == "q"]
        assert await list_all(reads, "q", "FAILED", 4) == failed_q
        assert await list_all(reads, "nowhere", None, 4) == []
        # newest first: creation times never go up along the listing
        created = [(await reads.get(t))["created_at"] for t in expected]
        assert created == sorted(created, reverse=True)

    run(tmp_path, scenario)


def test_tasks_brought_back_from_the_archive_never_cut_a_listing_short(tmp_path: Path) -> None:
    olds = [uid(n) for n in range(5)]
    news = [uid(n) for n in range(100, 103)]

    async def scenario(core: RegistryCore) -> None:
        reads = Reads(core)
        await fill(core, "q", olds)
        for n, t in enumerate(olds):  # made minutes apart, long ago
            core.tasks[t].created_at -= 600 + 100 * n
        await archive_all(core)
        await fill(core, "q", news)  # newer than every old one, held in admission order
        for t in olds[::-1]:  # back in memory after the new ones, the oldest first
            assert await core.unarchive(t) is not None
        expected = news[::-1] + olds  # newest first
        for limit in (1, 2, 3, 4, 10):
            assert await list_all(reads, None, None, limit) == expected, limit
            assert await list_all(reads, "q", "FAILED", limit) == [
                t for t in expected if (await reads.get(t))["status"] == "FAILED"
            ], limit
        await core.commits.commit()

    run(tmp_path, scenario)

    async def after_restart(core: RegistryCore) -> None:
        assert not core.out_of_order  # a restart loads the records in creation order
        assert await list_all(Reads(core), None, None, 2) == news[::-1] + olds

    run(tmp_path, after_restart)


def test_a_requeued_archived_task_comes_back_once(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(6)]

    async def scenario(core: RegistryCore) -> None:
        reads, intake = Reads(core), Intake(core)
        await fill(core, "q", ids)
        await archive_all(core)
        ((made),) = await intake.requeue([ids[1]])
        assert made["retry_of"] == ids[1]
        old = await reads.get(ids[1])
        assert (
            old is not None and old["retried_as"] == made["task_id"] and old["status"] == "FAILED"
        )
        # by queue and status, archived ones included: ids 3 and 5 failed too
        again = await intake.requeue(None, "q", "FAILED", 10)
        assert sorted(m["retry_of"] for m in again) == sorted([ids[3], ids[5]])
        listed = await list_all(reads, "q", None, 5)
        assert len(listed) == len(set(listed)) == 9
        # archived again later: read from the newest file, the older row is dead
        sent = dict(dispatched(core).submitted)
        for m in [made, *again]:
            await core.settle(m["task_id"], sent[m["task_id"]], succeeded(1, []))
        await archive_all(core)
        assert (await reads.get(ids[1]))["retried_as"] == made["task_id"]
        assert len(core.archive) == 9
        assert await list_all(reads, "q", None, 4) == listed

    run(tmp_path, scenario)

    async def after_restart(core: RegistryCore) -> None:
        reads = Reads(core)
        assert len(core.archive) == 9  # duplicates across files: the newest one counts
        assert (await reads.get(ids[1]))["retried_as"] is not None
        assert len(await list_all(Reads(core), "q", None, 3)) == 9

    run(tmp_path, after_restart)


def test_a_sweep_during_a_requeue_leaves_its_tasks_and_a_refused_requeue_makes_none(
    tmp_path: Path,
) -> None:
    ids = [uid(n) for n in range(8)]

    async def scenario(core: RegistryCore) -> None:
        reads, intake = Reads(core), Intake(core)
        await fill(core, "q", ids)
        await archive_all(core)
        bring_back = core.unarchive_many

        async def then_a_sweep(task_ids: Any) -> Any:
            found = await bring_back(task_ids)
            await core.commits.commit()  # stored: the sweep's own guard no longer holds them
            await archive_all(core)  # may take others, never these: the requeue pins them
            assert all(t in core.tasks and t in core.payloads for t in task_ids)
            return found

        core.unarchive_many = then_a_sweep  # type: ignore[method-assign]
        made = await intake.requeue(ids[:4])
        assert [m["retry_of"] for m in made] == ids[:4]
        again = await intake.requeue(None, "q", "FAILED", 10)
        assert sorted(m["retry_of"] for m in again) == sorted([ids[5], ids[7]])
        core.unarchive_many = bring_back  # type: ignore[method-assign]
        assert not core.pinned
        depth = core.counts["q"]
        assert await archive_all(core) == 2  # ids 5 and 7: unpinned once the call ended
        # one task's arguments gone: the requeue is refused whole, nothing is left PENDING
        assert (await core.unarchive_many([ids[4], ids[6]])).keys() == {ids[4], ids[6]}
        core.payloads.pop(ids[4])
        with pytest.raises(TaskNotFound, match="no longer stored"):
            await intake.requeue([ids[6], ids[4]])
        assert core.counts["q"] == depth and not core.pinned
        assert (await reads.get(ids[6]))["retried_as"] is None

    run(tmp_path, scenario)


def test_a_sweep_walks_records_made_before_its_cutoff_and_those_brought_back(
    tmp_path: Path,
) -> None:
    ids = [uid(n) for n in range(6)]
    times: dict[str, Any] = {}

    async def scenario(core: RegistryCore) -> None:
        await fill(core, "q", ids[:3])
        await archive_all(core)
        ((made),) = await Intake(core).requeue([ids[1]])  # back in memory, held out of order
        times["cutoff"], times["made"] = time.time(), made["task_id"]
        await asyncio.sleep(0.01)
        await fill(core, "q", ids[3:])
        assert core.out_of_order == {ids[1]}
        walked = [rec.id for rec in core._made_before(times["cutoff"])]
        # the walk stopped at the first record made after the cutoff, then took ids[1]
        assert walked == [times["made"], ids[1]]

    async def after_restart(core: RegistryCore) -> None:
        assert core.out_of_order == set()  # records load in creation order
        walked = [rec.id for rec in core._made_before(times["cutoff"])]
        assert walked == [ids[1], times["made"]]
        assert await core.archive_ended(-1.0) == 4  # ids[1] and the three later ones
        assert [rec.id for rec in core._made_before(time.time() + 1)] == [times["made"]]
        assert core.out_of_order == set()

    run(tmp_path, scenario)
    run(tmp_path, after_restart)


def test_records_that_change_while_archived_stay_in_memory(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(4)]

    async def scenario(core: RegistryCore) -> None:
        await fill(core, "q", ids)
        write = core.archive.write

        def slow_write(records: Any, payloads: Any) -> Any:
            time.sleep(0.3)
            return write(records, payloads)

        core.archive.write = slow_write  # type: ignore[method-assign]
        moving = asyncio.ensure_future(core.archive_ended(-1.0))
        await asyncio.sleep(0.1)
        await Intake(core).requeue([ids[1]])  # changes ids[1] while its file is written
        assert await moving == 4
        assert ids[1] in core.tasks and ids[0] not in core.tasks
        assert core.archive.locate(ids[1]) is None  # its archived copy is dead
        assert (await Reads(core).get(ids[1]))["retried_as"] is not None

    run(tmp_path, scenario)


def test_retention_drops_whole_archive_files_and_their_outputs(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(10)]

    async def scenario(core: RegistryCore) -> None:
        reads = Reads(core)
        outputs = core.storage
        await fill(core, "q", ids[:5])
        keys = {}
        for t in ids[:5]:  # two outputs per task, as a worker would have saved them
            rec = core.tasks[t]
            for name in ("a.txt", "b.txt"):
                key = f"outputs/q/{t}/{uuid.uuid4().hex}/{name}"
                outputs.put_bytes(key, b"x")
                rec.outputs.append({"id": key.split("/")[3], "name": name, "key": key, "size": 1})
                keys[key.split("/")[3]] = key
            core.stage(rec)
        await core.commits.commit()
        await archive_all(core)
        for output_id, key in keys.items():  # the download route's lookup, from the archive
            assert await reads.output_key(output_id) == key
        assert await reads.output_key(uuid.uuid4().hex) is None
        assert await reads.output_key("../../etc/passwd") is None
        time.sleep(0.05)
        cutoff_age = time.time() - core.archive.files[0].newest_end
        await fill(core, "q", ids[5:])
        await archive_all(core)
        retention = next(h for h in core.hooks if isinstance(h, Retention))
        # the first file's tasks are past the age, the second's not
        dropped = core.archive.files[0].paths
        forgotten = await retention.purge(cutoff_age - 0.02)
        assert forgotten == 5 and len(core.archive.files) == 1
        assert all(Path(p).exists() for p in dropped)  # for a minute: reads may be at them
        core.retired = [(at - 61, paths) for at, paths in core.retired]
        await core.merge_archive()
        assert not any(Path(p).exists() for p in dropped)
        assert [await reads.get(t) for t in ids[:5]] == [None] * 5
        assert None not in [await reads.get(t) for t in ids[5:]]
        assert not list((tmp_path / "storage" / "outputs" / "q").glob("*"))
        assert reads.queue_stats()["q"]["by_status"] == {"COMPLETE": 3, "FAILED": 2}

    run(tmp_path, scenario)


def test_undelivered_webhooks_and_recent_tasks_stay_in_memory(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(2)]

    async def scenario(core: RegistryCore) -> None:
        await fill(core, "q", ids)
        assert await core.archive_ended(3600) == 0  # ended just now
        spec = core.tasks[ids[0]].spec
        core.tasks[ids[0]].spec = dataclasses.replace(spec, callback_url="http://127.0.0.1:9/h")
        core.tasks[ids[0]].webhook = {"url": "x", "delivered": False, "attempts": []}
        assert await core.archive_ended(-1.0) == 1
        assert list(core.tasks) == [ids[0]]

    run(tmp_path, scenario)


def test_large_return_values_are_read_back_from_beside_the_outputs(tmp_path: Path) -> None:
    from raybeam.wire import LARGE_RESULT, large_result

    big = {"text": "x" * (LARGE_RESULT + 1)}
    assert large_result(succeeded({"small": 1}, [])) is None
    assert large_result(succeeded(7, [])) is None
    name, data = large_result(succeeded(big, [])) or ("", b"")
    assert name == "result.json" and len(data) > LARGE_RESULT
    assert (large_result(succeeded({1, 2}, [])) or ("",))[0] == ""  # a small pickled value
    ids = [uid(1), uid(2)]

    async def scenario(core: RegistryCore) -> None:
        reads = Reads(core)
        await fill(core, "q", [ids[0]], value=None)
        intake = Intake(core)
        await intake.submit("q", [{"id": ids[1], "payload": "p", "overrides": {}}])
        key = f"outputs/q/{ids[1]}/result.json"
        core.storage.put_bytes(key, data)  # as the worker stores it
        outcome = succeeded(None, [])
        outcome["result_key"] = key
        await core.settle(ids[1], dict(dispatched(core).submitted)[ids[1]], outcome)
        assert core.tasks[ids[1]].result is None  # the record stays small
        got = await reads.get(ids[1])
        assert got is not None and got["result"] == big and got["outputs"] == []
        assert (await reads.wait_final(ids[1], 1))["result"] == big
        journal = "".join(
            p.read_text() for p in (tmp_path / "storage" / "registry" / "journal").iterdir()
        )
        assert "x" * 1000 not in journal
        await archive_all(core)
        assert (await reads.get(ids[1]))["result"] == big  # archived, still read back
        retention = next(h for h in core.hooks if isinstance(h, Retention))
        assert await retention.purge(-1.0) == 2
        assert not (tmp_path / "storage" / key).exists()

    run(tmp_path, scenario)


def test_a_crash_between_the_archive_file_and_the_journal_duplicates_nothing(
    tmp_path: Path,
) -> None:
    ids = [uid(n) for n in range(5)]

    async def first(core: RegistryCore) -> None:
        await fill(core, "q", ids)
        # the file is written, then the registry dies before the journal drops the records
        core.archive.adopt(core.archive.write(list(core.tasks.values()), {}))

    run(tmp_path, first)

    async def second(core: RegistryCore) -> None:
        reads = Reads(core)
        assert sorted(core.tasks) == sorted(ids) and len(core.archive) == 0
        assert await list_all(reads, None, None, 2) == [
            r["id"] for r in (await reads.list(None, None, 10, None))[0]
        ]
        assert len(await list_all(reads, None, None, 2)) == 5
        assert reads.queue_stats()["q"]["by_status"] == {"COMPLETE": 3, "FAILED": 2}
        assert await archive_all(core) == 5 and len(core.archive) == 5

    run(tmp_path, second)

    async def third(core: RegistryCore) -> None:
        assert len(core.archive) == 5 and not core.tasks  # the older file's rows are dead
        assert len(await list_all(Reads(core), None, None, 2)) == 5

    run(tmp_path, third)


def test_a_restart_answers_before_the_archive_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live state is all a restart waits for; the archive's index is read in a thread
    beside it, and what needs the archive waits for that read. A read that fails is tried
    again by the next caller."""
    ids = [uid(n) for n in range(6)]

    async def first(core: RegistryCore) -> None:
        await fill(core, "q", ids)
        assert await archive_all(core) == 6

    run(tmp_path, first)

    release = threading.Event()
    tries: list[int] = []
    load = Archive.load

    def slow_load(archive: Archive, expired_before: float = 0.0) -> list[str]:
        tries.append(1)
        if len(tries) == 1:
            raise OSError("storage away")
        assert release.wait(20)
        return load(archive, expired_before)

    monkeypatch.setattr(Archive, "load", slow_load)

    async def second() -> None:
        core = make_core(tmp_path)
        try:
            await core.boot()  # the first read of the index failed, in the background
            await asyncio.sleep(0.05)
            assert tries == [1] and not core.archive_ready
            # live work goes on: a new task is stored and runs
            await Intake(core).submit("q", [{"id": uid(99), "payload": "p", "overrides": {}}])
            sent = dict(dispatched(core).submitted)
            await core.settle(uid(99), sent[uid(99)], succeeded(1, []))
            # what needs the archive waits for it (and tries the read again)
            sweep = asyncio.ensure_future(core.archive_ended(3600.0))
            archived = asyncio.ensure_future(core.archived())
            await asyncio.sleep(0.1)
            assert not sweep.done() and not archived.done() and len(tries) == 2
            release.set()
            assert await archived is core.archive and core.archive_ready
            assert await sweep == 0
            assert len(core.archive) == 6
            assert (await Reads(core).get(ids[0]))["status"] == "COMPLETE"
            listed = await list_all(Reads(core), "q", None, 4)
            assert listed[0] == uid(99) and sorted(listed[1:]) == sorted(ids)
        finally:
            release.set()
            for task in list(core.background):
                task.cancel()
            await asyncio.gather(*core.background, return_exceptions=True)

    asyncio.run(second())


def test_a_damaged_archive_file_is_logged_and_reported_once_the_index_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The archive is read after the first answer, so its problems join the registry's
    `load_problems` then, and are logged as the journal's are."""
    ids = [uid(n) for n in range(4)]

    async def first(core: RegistryCore) -> None:
        await fill(core, "q", ids)
        assert await archive_all(core) == 4

    run(tmp_path, first)
    folder = tmp_path / "storage" / "registry" / "archive"
    (folder / "0000000000000099.parquet").write_bytes(b"not parquet")

    async def second(core: RegistryCore) -> None:
        assert core.archive_ready and len(core.archive) == 4
        assert [p for p in core.load_problems if "0000000000000099.parquet" in p]

    run(tmp_path, second)
    assert (
        "registry archive: archive file" in caplog.text
        and "0000000000000099.parquet" in caplog.text
    )


def test_a_new_archive_file_never_replaces_one_there(tmp_path: Path) -> None:
    """Not one this registry could not read (a storage error at its start), nor one another
    registry wrote with the number it was about to take."""
    ids = [uid(n) for n in range(6)]
    folder = tmp_path / "storage" / "registry" / "archive"

    async def first(core: RegistryCore) -> None:
        await fill(core, "q", ids[:2])
        assert await archive_all(core) == 2

    run(tmp_path, first)
    (folder / "0000000000000002.parquet").write_bytes(b"unreadable here, someone's still")

    async def second(core: RegistryCore) -> None:
        assert core.archive.next_seq == 3  # its number is taken, readable or not
        await fill(core, "q", ids[2:4])
        (folder / "0000000000000003.parquet").write_bytes(b"a stale registry's")
        assert await archive_all(core) == 2  # into file 4, past both
        assert [f.seq for f in core.archive.files] == [1, 4]
        assert (await Reads(core).get(ids[3]))["status"] == "FAILED"

    run(tmp_path, second)
    assert (folder / "0000000000000002.parquet").read_bytes() == b"unreadable here, someone's still"
    assert (folder / "0000000000000003.parquet").read_bytes() == b"a stale registry's"


def test_a_registry_that_may_not_write_archives_and_removes_nothing(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(4)]

    async def scenario(core: RegistryCore) -> None:
        await fill(core, "q", ids[:2])
        assert await archive_all(core) == 2
        await fill(core, "q", ids[2:])
        core.commits.current = lambda: False  # its lease lapsed (or was taken)
        assert not core.may_write()
        assert await core.archive_ended(-1.0) == 0
        assert await Retention(core).purge(-1.0) == 0
        assert len(core.archive.files) == 1 and len(core.tasks) == 2
        core.commits.current = lambda: True
        assert await Retention(core).purge(-1.0) == 4

    run(tmp_path, scenario)


def test_small_archive_files_merge_and_every_read_stays_the_same(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(100)]
    folder = tmp_path / "storage" / "registry" / "archive"
    seen: dict[str, Any] = {}

    async def scenario(core: RegistryCore) -> None:
        reads = Reads(core)
        for start in range(0, 100, 5):  # twenty sweeps of five tasks: twenty small files
            await fill(core, "q" if start % 10 else "other", ids[start : start + 5])
            await archive_all(core)
            time.sleep(0.002)
        assert len(core.archive.files) == 20
        seen["list"] = await list_all(reads, None, None, 7)
        seen["failed"] = await list_all(reads, "q", "FAILED", 3)
        seen["get"] = {t: await reads.get(t) for t in ids}
        seen["stats"] = reads.queue_stats()
        merged = 0
        while n := await core.merge_archive():
            merged += n
        # 8 + 8 of five rows merged into two of forty; four small ones wait for more
        assert merged == 16 and sorted(len(f) for f in core.archive.files) == [5] * 4 + [40] * 2
        assert await list_all(reads, None, None, 7) == seen["list"]
        assert await list_all(reads, "q", "FAILED", 3) == seen["failed"]
        assert {t: await reads.get(t) for t in ids} == seen["get"]
        assert reads.queue_stats() == seen["stats"]
        assert len(list(folder.glob("*.parquet"))) == 2 * 22  # the merged ones, for a minute
        seen["retired"] = [p for _, paths in core.retired for p in paths]

    run(tmp_path, scenario)

    async def after_a_crash(core: RegistryCore) -> None:
        """Restarted before the merged files were deleted: the newest row of a task counts."""
        reads = Reads(core)
        assert len(core.archive) == 100
        assert await list_all(reads, None, None, 7) == seen["list"]
        assert {t: await reads.get(t) for t in ids} == seen["get"]
        assert reads.queue_stats() == seen["stats"]
        while await core.merge_archive():  # the merged files hold nothing current: they go
            pass
        assert sorted(len(f) for f in core.archive.files) == [5] * 4 + [40] * 2
        core.retired = [(at - 61, paths) for at, paths in core.retired]
        await core.merge_archive()  # a minute on, they are deleted
        assert not any(Path(p).exists() for p in seen["retired"])
        assert len(list(folder.glob("*.parquet"))) == 2 * 6
        assert {t: await reads.get(t) for t in ids} == seen["get"]

    run(tmp_path, after_a_crash)


def test_a_restart_reads_rows_past_the_retention_as_gone(tmp_path: Path) -> None:
    """As they read before it: their task may have had a newer row in a file retention
    removed already, which would otherwise bring an older copy back."""
    ids = [uid(n) for n in range(6)]

    async def first(core: RegistryCore) -> None:
        await fill(core, "q", ids)
        for t in ids[:4]:  # ended two days ago: past the retention (a day)
            core.tasks[t].ended_at = time.time() - 2 * 86400
            core.stage(core.tasks[t])
        await core.commits.commit()
        assert await archive_all(core) == 6

    run(tmp_path, first)

    async def second(core: RegistryCore) -> None:
        reads = Reads(core)
        assert [await reads.get(t) is None for t in ids] == [True] * 4 + [False] * 2
        assert await list_all(reads, None, None, 2) == [t for t in ids[::-1] if t in ids[4:]]
        assert sum(reads.queue_stats()["q"]["by_status"].values()) == 2
        assert core.archive.mergeable(time.time() - 86400) == ([], [])

    run(tmp_path, second)


def test_a_merge_leaves_rows_past_the_retention_out_with_their_outputs(tmp_path: Path) -> None:
    ids = [uid(n) for n in range(16)]
    folder = tmp_path / "storage" / "outputs" / "q" / ids[0]

    async def scenario(core: RegistryCore) -> None:
        reads = Reads(core)
        for start in range(0, 16, 2):  # eight small files
            await fill(core, "q", ids[start : start + 2])
            if start == 0:  # the first task ended two days ago, and saved a file
                rec = core.tasks[ids[0]]
                rec.ended_at = time.time() - 2 * 86400
                key = f"outputs/q/{ids[0]}/{uuid.uuid4().hex}/a.txt"
                core.storage.put_bytes(key, b"x")
                rec.outputs = [{"id": key.split("/")[3], "name": "a.txt", "key": key, "size": 1}]
                core.stage(rec)
                await core.commits.commit()
            await archive_all(core)
        assert folder.exists() and await reads.get(ids[0]) is not None
        first = core.archive.files[0]
        assert await core.merge_archive() == 8
        assert [len(f) for f in core.archive.files] == [15]
        assert await reads.get(ids[0]) is None and not folder.exists()
        assert None not in [await reads.get(t) for t in ids[1:]]
        stats = reads.queue_stats()
        core.archive.drop(first)  # dropped already (by the merge): left as it is
        assert (
            reads.queue_stats()
            == stats
            == {"q": {**stats["q"], "by_status": {"COMPLETE": 7, "FAILED": 8}}}
        )

    run(tmp_path, scenario)
