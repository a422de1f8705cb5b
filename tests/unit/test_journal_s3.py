"""The journal on S3 (moto's server in this process, on loopback): each batch is one PUT with
`If-None-Match: *` straight to its final key, and no journal object is ever overwritten, so a
second writer fails instead of replacing the first one's batches. The local counterpart (a
segment is created with O_EXCL) is at the end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

import raybeam.journal as journal_module
from raybeam.errors import SegmentExists, StorageInUse
from raybeam.fencing import StorageLease
from raybeam.journal import GroupCommit, Journal
from raybeam.storage import Storage
from tests.support.moto_server import create_bucket, moto_s3, s3_client

pytestmark = pytest.mark.timeout(60)

BUCKET = "raybeam-journal"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3(in_process=True) as endpoint:
        create_bucket(endpoint, BUCKET)
        yield endpoint


@dataclass
class Request:
    method: str
    key: str  # below the bucket
    if_none_match: str | None
    copy_source: str | None
    if_match: str | None = None


@pytest.fixture
def requests(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    """Every request the server gets for the bucket, as it gets them."""
    seen: list[Request] = []
    real = DomainDispatcherApplication.__call__

    def call(self: DomainDispatcherApplication, environ: dict[str, Any], start: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == f"/{BUCKET}" or path.startswith(f"/{BUCKET}/"):
            seen.append(
                Request(
                    environ["REQUEST_METHOD"],
                    path[len(BUCKET) + 2 :],
                    environ.get("HTTP_IF_NONE_MATCH"),
                    environ.get("HTTP_X_AMZ_COPY_SOURCE"),
                    environ.get("HTTP_IF_MATCH"),
                )
            )
        return real(self, environ, start)

    monkeypatch.setattr(DomainDispatcherApplication, "__call__", call)
    return seen


@pytest.fixture
def s3(s3_endpoint: str) -> Iterator[Any]:
    client = s3_client(s3_endpoint)
    yield client
    client.close()


@pytest.fixture
def prefix(s3_endpoint: str) -> str:
    return uuid.uuid4().hex


def journal(prefix: str) -> Journal:
    storage = Storage(f"s3://{BUCKET}/{prefix}")
    return Journal(storage.fs, storage.path("registry"))


def keys(s3: Any, prefix: str) -> list[str]:
    """What the bucket holds below `prefix`, listed by boto3 (no s3fs cache in the way)."""
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        found += [o["Key"][len(prefix) + 1 :] for o in page.get("Contents", [])]
    return found


def segment(seq: int) -> str:
    return f"registry/journal/{seq:016d}.jsonl"


def batch(i: int) -> list[dict[str, Any]]:
    return [{"t": "task", "k": str(i % 7), "d": {"i": i}}, {"t": "task", "k": f"x{i}", "d": i}]


def test_each_batch_is_one_conditional_put_at_its_final_key(
    prefix: str, requests: list[Request], s3: Any
) -> None:
    j = journal(prefix)
    requests.clear()
    for i in range(100):
        assert j.append(batch(i)) == i + 1
    assert [(r.method, r.key, r.if_none_match) for r in requests] == [
        ("PUT", f"{prefix}/{segment(i)}", "*") for i in range(1, 101)
    ]
    assert sorted(keys(s3, prefix)) == [segment(i) for i in range(1, 101)]


def test_load_after_many_batches_returns_the_state(prefix: str, requests: list[Request]) -> None:
    j = journal(prefix)
    expected: dict[tuple[str, str], Any] = {}
    for i in range(150):
        entries = batch(i)
        if i % 10 == 9:
            entries.append({"t": "task", "k": f"x{i - 1}", "d": None})
        j.append(entries)
        for e in entries:
            if e["d"] is None:
                expected.pop((e["t"], e["k"]), None)
            else:
                expected[(e["t"], e["k"])] = e["d"]
    again = journal(prefix)
    state, problems = again.load()
    assert state == expected and problems == []
    assert again.seq == 150
    assert not [r for r in requests if r.key.endswith(".tmp") or r.copy_source]


def test_a_segment_is_never_overwritten(prefix: str, requests: list[Request], s3: Any) -> None:
    first, second = journal(prefix), journal(prefix)
    first.append([{"t": "task", "k": "a", "d": 1}])
    stored = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{segment(1)}")["Body"].read()
    requests.clear()
    # a second writer that has not loaded what the first wrote tries the same segment
    with pytest.raises(SegmentExists, match="another registry writes to this storage") as raised:
        second.append([{"t": "task", "k": "b", "d": 2}])
    assert isinstance(raised.value, StorageInUse)
    assert second.seq == 0
    # the refused PUT, then only reads (which tell it from a retry of its own)
    assert (requests[0].method, requests[0].if_none_match) == ("PUT", "*")
    assert {r.method for r in requests[1:]} <= {"HEAD", "GET"}
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{segment(1)}")["Body"].read() == stored
    assert keys(s3, prefix) == [segment(1)]
    state, _ = journal(prefix).load()
    assert state == {("task", "a"): 1}


def test_a_retried_create_that_had_landed_is_no_conflict(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = journal(prefix)
    pipe_file = j.fs.pipe_file
    calls = []

    def answer_lost(path: str, data: bytes, **kwargs: Any) -> None:
        pipe_file(path, data, **kwargs)
        calls.append(path)
        if len(calls) == 1:
            raise OSError("connection reset after the PUT reached the store")

    monkeypatch.setattr(j.fs, "pipe_file", answer_lost)
    entries = [{"t": "task", "k": "a", "d": 1}]
    with pytest.raises(OSError, match="connection reset"):
        j.append(entries)
    assert j.append(entries) == 1  # the caller's retry: the same bytes are there already
    assert j.append([{"t": "task", "k": "b", "d": 2}]) == 2
    state, _ = journal(prefix).load()
    assert state == {("task", "a"): 1, ("task", "b"): 2}


def test_a_registry_whose_next_segment_is_taken_stops_writing(prefix: str, s3: Any) -> None:
    j = journal(prefix)
    foreign = b'{"t":"task","k":"theirs","d":1}\n'
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{segment(1)}", Body=foreign)

    async def scenario() -> None:
        commits = GroupCommit(j, lambda: [], lambda: 0)
        lease = StorageLease(j.fs, j.root, "cluster-a", "i1", seconds=30)
        await asyncio.to_thread(lease.acquire)
        commits.allowed, commits.fenced = (lambda: lease.held), lease.give_up
        runner = asyncio.get_running_loop().create_task(commits.run())
        commits.stage("task", "ours", 1)
        with pytest.raises(SegmentExists):
            await commits.commit()  # refused at once, not retried for ever
        # and it gives its lease up (no more renewals): it cannot write, another one may
        assert not lease.held and not await asyncio.to_thread(lease.renew)
        commits.stage("task", "ours", 2)
        with pytest.raises(StorageInUse):
            await commits.commit()
        runner.cancel()

    asyncio.run(scenario())
    assert [k for k in keys(s3, prefix) if k != "registry/lease"] == [segment(1)]
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}/{segment(1)}")["Body"].read() == foreign


def test_compaction_on_s3_keeps_the_segments_bounded(
    prefix: str, requests: list[Request], s3: Any
) -> None:
    j = journal(prefix)
    live: dict[str, int] = {}
    most = 0

    async def scenario() -> None:
        nonlocal most
        commits = GroupCommit(
            j,
            lambda: [("task", k, v) for k, v in live.items()],
            lambda: len(live),
        )
        commits.snapshot_min = 20
        runner = asyncio.get_running_loop().create_task(commits.run())
        for i in range(300):
            live[str(i % 10)] = i
            commits.stage("task", str(i % 10), i)
            if i % 2 == 0:
                await commits.commit()
            if i % 25 == 0:
                stored = await asyncio.to_thread(keys, s3, prefix)
                most = max(most, sum(k.startswith("registry/journal/") for k in stored))
        await commits.commit()
        while commits.compacting is not None:
            await asyncio.sleep(0.01)
        runner.cancel()

    asyncio.run(scenario())
    assert j.seq > 100  # that many batches were written, one object each
    stored = keys(s3, prefix)
    segments = [k for k in stored if k.startswith("registry/journal/")]
    snapshots = [k for k in stored if k.startswith("registry/snapshot/")]
    assert len(snapshots) == 1
    assert max(most, len(segments)) <= 40  # about snapshot_min, not the batches written
    assert not [r for r in requests if r.key.endswith(".tmp") or r.copy_source]
    puts = [r for r in requests if r.method == "PUT"]
    assert all(r.if_none_match == "*" for r in puts)
    assert any("/registry/snapshot/" in r.key for r in puts)
    state, problems = journal(prefix).load()
    assert state == {("task", k): v for k, v in live.items()}
    assert problems == []


def test_small_batches_beside_many_live_tasks_still_compact_on_s3(
    prefix: str, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries alone would wait for 4 x live of them: a restart would fetch that many objects."""
    monkeypatch.setattr(journal_module, "SNAPSHOT_OBJECTS", 30)
    j = journal(prefix)
    live = {str(i): i for i in range(1000)}

    async def scenario() -> None:
        commits = GroupCommit(
            j, lambda: [("task", k, v) for k, v in live.items()], lambda: len(live)
        )
        runner = asyncio.get_running_loop().create_task(commits.run())
        for k, v in live.items():
            commits.stage("task", k, v)
        await commits.commit()
        for i in range(100):  # one small change a batch: 101 entries, far below 4 x 1000
            live["0"] = -i
            commits.stage("task", "0", -i)
            await commits.commit()
        while commits.compacting is not None:
            await asyncio.sleep(0.01)
        runner.cancel()

    asyncio.run(scenario())
    segments = [k for k in keys(s3, prefix) if k.startswith("registry/journal/")]
    assert j.seq > 100 and len(segments) <= 31
    state, _ = journal(prefix).load()
    assert state == {("task", k): v for k, v in live.items()}


def test_a_local_segment_that_exists_already_is_never_appended_to(tmp_path: Path) -> None:
    j = Journal(LocalFileSystem(auto_mkdir=True), str(tmp_path / "registry"))
    taken = tmp_path / "registry" / "journal" / f"{1:016d}.jsonl"
    taken.write_text('{"t":"task","k":"theirs","d":1}\n')
    with pytest.raises(SegmentExists, match="exists already"):
        j.append([{"t": "task", "k": "ours", "d": 2}])
    assert j.seq == 0 and j.segment is None
    assert taken.read_text() == '{"t":"task","k":"theirs","d":1}\n'
    assert list(taken.parent.iterdir()) == [taken]


def test_the_lease_is_read_in_one_get_that_no_renewal_can_fail(
    prefix: str, requests: list[Request]
) -> None:
    # the holder rewrites the lease in place; a read bound to the ETag of an earlier request
    # (HEAD, then GET with If-Match) failed with FileExpired when a renewal came between
    storage = Storage(f"s3://{BUCKET}/{prefix}")
    holder = StorageLease(storage.fs, storage.path("registry"), "cluster-a", "i1", seconds=30)
    other = StorageLease(storage.fs, storage.path("registry"), "cluster-b", "i1", seconds=30)
    holder.acquire()
    requests.clear()
    with pytest.raises(StorageInUse, match="cluster-a/i1"):
        other.acquire()
    reads = [r for r in requests if r.key.endswith("registry/lease") and r.method == "GET"]
    assert len(reads) == 1 and reads[0].if_match is None, requests
    # (s3fs may ask the size first, with a HEAD; the GET that follows depends on nothing)
