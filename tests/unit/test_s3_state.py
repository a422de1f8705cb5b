"""The registry's state on S3 (moto's server in this process, on loopback): the storage
lease between two clusters, the archive, and thousands of tasks through the journal."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from raybeam.archive import Archive
from raybeam.errors import StorageInUse
from raybeam.fencing import StorageLease
from raybeam.journal import GroupCommit, Journal
from raybeam.record import TaskRecord, TaskSpec, TaskStatus
from raybeam.storage import Storage
from tests.support.moto_server import create_bucket, moto_s3

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def storage() -> Iterator[Storage]:
    with moto_s3(in_process=True) as endpoint:
        bucket = "rb-state-" + uuid.uuid4().hex[:8]
        create_bucket(endpoint, bucket)
        yield Storage(f"s3://{bucket}/raybeam")


def test_the_lease_on_s3_refuses_another_cluster_until_it_expires(storage: Storage) -> None:
    folder = storage.path(f"lease-{uuid.uuid4().hex[:6]}")
    a = StorageLease(storage.fs, folder, "cluster-a", "i1", seconds=30)
    b = StorageLease(storage.fs, folder, "cluster-b", "i1", seconds=30)
    a.acquire(now=1000.0)
    with pytest.raises(StorageInUse, match="cluster-a"):
        b.acquire(now=1010.0)
    assert a.renew(now=1020.0)
    b.acquire(now=1051.0)
    assert b.held and not a.renew(now=1052.0)


def test_thousands_of_tasks_through_the_journal_and_the_archive_on_s3(storage: Storage) -> None:
    root = storage.path(f"registry-{uuid.uuid4().hex[:6]}")
    journal = Journal(storage.fs, root)
    spec = TaskSpec(function="f")
    records = [
        TaskRecord(id=str(uuid.uuid4()), queue="q", spec=spec, status=TaskStatus.COMPLETE)
        for _ in range(3000)
    ]

    async def scenario() -> int:
        live = {r.id: r for r in records}
        commits = GroupCommit(
            journal,
            lambda: [("task", k, v) for k, v in live.items()],
            lambda: len(live),
        )
        commits.snapshot_min = 500
        runner = asyncio.get_running_loop().create_task(commits.run())
        for start in range(0, len(records), 100):  # 30 batches, as 30 map() calls would
            for rec in records[start : start + 100]:
                commits.stage("task", rec.id, rec)
            await commits.commit()
        while commits.compacting is not None:
            await asyncio.sleep(0.05)
        runner.cancel()
        return len(storage.fs.ls(f"{root}/journal"))

    segments = asyncio.run(scenario())
    assert segments <= 30  # compaction keeps what a restart reads bounded
    state, problems = Journal(storage.fs, root).load()
    assert problems == [] and len(state) == 3000
    # the archive of the same records, on S3: written, loaded again, read by id
    archive = Archive(storage.fs, root)
    archive.adopt(archive.write(records, {}))
    again = Archive(storage.fs, root)
    assert again.load() == [] and len(again) == 3000
    found = again.read(records[1234].id)
    assert found is not None and found[0] == records[1234]
