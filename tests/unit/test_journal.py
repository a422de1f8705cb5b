from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from raybeam.errors import CorruptBlob
from raybeam.journal import Journal, blob_digest
from raybeam.recovery import load_functions


def journal(tmp_path: Path) -> Journal:
    return Journal(LocalFileSystem(auto_mkdir=True), str(tmp_path / "registry"))


def test_batches_replay_in_order_and_later_entries_win(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.append([{"t": "task", "k": "a", "d": {"n": 1}}, {"t": "task", "k": "b", "d": {"n": 1}}])
    j.append([{"t": "task", "k": "a", "d": {"n": 2}}, {"t": "task", "k": "b", "d": None}])
    state, problems = journal(tmp_path).load()
    assert state == {("task", "a"): {"n": 2}}
    assert problems == []


def test_snapshot_replaces_the_journal_it_covers(tmp_path: Path) -> None:
    j = journal(tmp_path)
    for i in range(5):
        j.append([{"t": "task", "k": str(i), "d": {"i": i}}])
    j.write_snapshot(['{"t": "task", "k": "0", "d": {"i": 0}}'], j.seal())
    j.append([{"t": "task", "k": "9", "d": {"i": 9}}])
    assert len(list((tmp_path / "registry" / "journal").iterdir())) == 1
    j2 = journal(tmp_path)
    state, _ = j2.load()
    assert state == {("task", "0"): {"i": 0}, ("task", "9"): {"i": 9}}
    assert j2.seq == j.seq


def test_torn_and_corrupt_files_are_skipped_and_reported(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.append([{"t": "task", "k": "good", "d": {"ok": True}}])
    (tmp_path / "registry" / "journal" / f"{2:016d}.jsonl").write_text(
        '{"t": "task", "k": "x", "d"'
    )
    (tmp_path / "registry" / "journal" / f"{3:016d}.jsonl.abc.tmp").write_text("garbage")
    (tmp_path / "registry" / "snapshot" / f"{9:016d}.json").write_text("[{not json")
    state, problems = journal(tmp_path).load()
    assert state == {("task", "good"): {"ok": True}}
    assert any("line 1 unreadable" in p for p in problems)
    assert any("snapshot" in p for p in problems)


def test_a_batch_is_one_line_and_lines_of_one_entry_load_beside_it(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.append([{"t": "task", "k": "a", "d": 1}, {"t": "payload", "k": "a", "d": "p"}])
    j.close()
    folder = tmp_path / "registry" / "journal"
    [segment] = folder.iterdir()
    assert segment.read_bytes() == b'[["task","a",1],["payload","a","p"]]\n'
    # as raybeams before batch lines wrote them: a line per entry
    (folder / f"{2:016d}.jsonl").write_text(
        '{"t": "task", "k": "a", "d": 2}\n{"t": "payload", "k": "a", "d": null}\n'
    )
    (folder / f"{3:016d}.jsonl").write_text(
        '[["task", "b", 1], {"t": "task", "k": "c", "d": 1}]\n'
        '[["task", "d", 1], ["task", "e"]]\n'  # a bad entry: the whole batch is skipped
        '[["task", ["not", "a", "key"], 1]]\n'
        '"neither"\n'
    )
    state, problems = journal(tmp_path).load()
    assert state == {("task", "a"): 2, ("task", "b"): 1, ("task", "c"): 1}
    assert [p.split(" line ")[1] for p in problems] == [
        "2 unreadable; skipped",
        "3 unreadable; skipped",
        "4 unreadable; skipped",
    ]


def test_a_snapshot_of_either_entry_form_loads(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.append([{"t": "task", "k": str(i), "d": i} for i in range(3)])
    j.write_snapshot([b'["task","0",0],{"t":"task","k":"1","d":1}'], j.seal())
    assert journal(tmp_path).load() == ({("task", "0"): 0, ("task", "1"): 1}, [])


def test_blobs_are_written_once(tmp_path: Path) -> None:
    j = journal(tmp_path)
    name = f"{blob_digest(b'one')}.pkl"
    j.store_blob(name, b"one")
    j.store_blob(name, b"one")
    assert j.load_blob(name) == b"one"
    assert j.load_blob(f"{blob_digest(b'missing')}.pkl") is None
    assert list((tmp_path / "registry" / "blobs").iterdir()) == [
        tmp_path / "registry" / "blobs" / name
    ]


def test_a_blob_that_does_not_match_its_digest_is_never_loaded(tmp_path: Path) -> None:
    j = journal(tmp_path)
    digest = blob_digest(b"the real function")
    j.store_blob(f"{digest}.pkl", b"the real function")
    (tmp_path / "registry" / "blobs" / f"{digest}.pkl").write_bytes(b"the real functioN")
    with pytest.raises(CorruptBlob, match=f"stored function {digest} is damaged") as raised:
        j.load_blob(f"{digest}.pkl")
    assert raised.value.digest == digest
    assert "Register the queue again" in str(raised.value)


def test_a_blob_sent_with_another_digest_is_refused(tmp_path: Path) -> None:
    j = journal(tmp_path)
    digest = blob_digest(b"what was pickled")
    with pytest.raises(CorruptBlob, match=f"sent for digest {digest}"):
        j.store_blob(f"{digest}.pkl", b"something else")
    assert j.load_blob(f"{digest}.pkl") is None


def test_storing_a_blob_again_repairs_a_damaged_copy(tmp_path: Path) -> None:
    j = journal(tmp_path)
    name = f"{blob_digest(b'fn')}.pkl"
    (tmp_path / "registry" / "blobs").mkdir()
    (tmp_path / "registry" / "blobs" / name).write_bytes(b"")  # torn by a crash
    j.store_blob(name, b"fn")
    assert j.load_blob(name) == b"fn"


def test_recovery_turns_a_damaged_blob_into_a_reason(tmp_path: Path) -> None:
    class Dispatch:
        def __init__(self) -> None:
            self.functions: dict[str, bytes] = {}

        def add_function(self, digest: str, blob: bytes) -> None:
            self.functions[digest] = blob

        def has_function(self, digest: str) -> bool:
            return digest in self.functions

    j = journal(tmp_path)
    good, bad = blob_digest(b"good"), blob_digest(b"bad")
    j.store_blob(f"{good}.pkl", b"good")
    j.store_blob(f"{bad}.pkl", b"bad")
    (tmp_path / "registry" / "blobs" / f"{bad}.pkl").write_bytes(b"evil")
    dispatch = Dispatch()
    problems = load_functions(j, dispatch, {good, bad})  # type: ignore[arg-type]
    assert dispatch.functions == {good: b"good"}
    assert list(problems) == [bad]
    assert problems[bad].startswith("the queue's function could not be loaded: ")
    assert bad in problems[bad]


def test_local_segments_take_many_batches_and_a_torn_tail_is_skipped(tmp_path: Path) -> None:
    j = journal(tmp_path)
    for i in range(3):
        j.append([{"t": "task", "k": str(i), "d": {"i": i}}])
    j.close()
    segments = list((tmp_path / "registry" / "journal").iterdir())
    assert len(segments) == 1
    with segments[0].open("a") as f:
        f.write('{"t": "task", "k": "torn", "d": {"i"')  # a crash in the middle of a write
    again = journal(tmp_path)
    state, problems = again.load()
    assert sorted(k for _, k in state) == ["0", "1", "2"]
    assert len(problems) == 1
    again.append([{"t": "task", "k": "3", "d": {"i": 3}}])  # goes to a new segment
    again.close()
    state, _ = journal(tmp_path).load()
    assert sorted(k for _, k in state) == ["0", "1", "2", "3"]


def test_object_stores_get_a_file_per_batch() -> None:
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    root = f"/rb-{uuid.uuid4().hex}/registry"
    j = Journal(fs, root)
    j.append([{"t": "task", "k": "a", "d": 1}])
    j.append([{"t": "task", "k": "b", "d": 2}])
    assert len(fs.ls(f"{root}/journal")) == 2
    state, _ = Journal(fs, root).load()
    assert state == {("task", "a"): 1, ("task", "b"): 2}


async def finish(commits: Any, runner: Any) -> None:
    """Let a snapshot under way end, then stop the writer."""
    while commits.compacting is not None:
        await asyncio.sleep(0.01)
    runner.cancel()


def assert_loads(tmp_path: Path, live: dict[str, int]) -> None:
    """The stored state loads as exactly `live`, with nothing skipped."""
    state, problems = journal(tmp_path).load()
    assert state == {("task", k): v for k, v in live.items()}
    assert problems == []


def test_group_commit_batches_changes_and_compacts(tmp_path: Path) -> None:
    from raybeam.journal import GroupCommit

    j = journal(tmp_path)
    live: dict[str, int] = {}

    async def scenario() -> None:
        commits = GroupCommit(
            j,
            lambda: [("task", k, v) for k, v in live.items()],
            lambda: len(live),
        )
        commits.snapshot_min = 50
        runner = asyncio.get_running_loop().create_task(commits.run())
        for i in range(200):
            live[str(i % 10)] = i
            commits.stage("task", str(i % 10), i)
            if i % 20 == 0:
                await commits.commit()
        await commits.commit()
        await finish(commits, runner)

    asyncio.run(scenario())
    j.close()
    assert list((tmp_path / "registry" / "snapshot").iterdir())
    assert_loads(tmp_path, live)


def test_batches_go_on_while_a_snapshot_is_made(tmp_path: Path, monkeypatch: Any) -> None:
    from raybeam import journal as journal_module
    from raybeam.journal import GroupCommit

    monkeypatch.setattr(journal_module, "SNAPSHOT_CHUNK", 10)
    j = journal(tmp_path)
    live = {str(i): i for i in range(1000)}
    # the snapshot's write waits for the test, so it is surely under way while batches go on
    release = threading.Event()
    write_snapshot = j.write_snapshot

    def held_snapshot(parts: list[str], seq: int) -> None:
        assert release.wait(30)
        write_snapshot(parts, seq)

    monkeypatch.setattr(j, "write_snapshot", held_snapshot)

    async def scenario() -> None:
        # a threshold of 1,000 entries, met by the first commit
        commits = GroupCommit(j, lambda: [("task", k, v) for k, v in live.items()], lambda: 1)
        commits.snapshot_min = 1000
        runner = asyncio.get_running_loop().create_task(commits.run())
        for k, v in live.items():
            commits.stage("task", k, v)
        await commits.commit()  # 1000 entries: a snapshot is due and starts
        assert commits.compacting is not None
        # changes made while it is under way are stored without waiting for it
        live["0"], live["new"] = -1, 7
        commits.stage("task", "0", -1)
        commits.stage("task", "new", 7)
        await commits.commit()
        assert commits.compacting is not None
        del live["5"]
        commits.stage("task", "5", None)
        await commits.commit()
        assert commits.compacting is not None
        release.set()
        await finish(commits, runner)

    asyncio.run(scenario())
    j.close()
    assert len(list((tmp_path / "registry" / "snapshot").iterdir())) == 1
    assert_loads(tmp_path, live)


def test_text_of_any_script_and_integers_beyond_64_bits_replay_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LC_ALL", "C")  # lines are UTF-8 bytes, whatever the locale says
    j = journal(tmp_path)
    values = {"a": "ünïcødé ✓ 漢字 🚀", "b": {"n": 2**70, "s": "ok"}, "c": [1.5, None, True]}
    j.append([{"t": "task", "k": k, "d": v} for k, v in values.items()])
    state, problems = journal(tmp_path).load()
    assert state == {("task", k): v for k, v in values.items()} and problems == []


def test_a_commit_with_nothing_staged_writes_nothing(tmp_path: Path) -> None:
    from raybeam.journal import GroupCommit

    j = journal(tmp_path)

    async def scenario() -> None:
        commits = GroupCommit(j, lambda: [], lambda: 0)
        runner = asyncio.get_running_loop().create_task(commits.run())
        commits.stage("task", "a", 1)
        await commits.commit()
        for _ in range(3):
            await commits.commit()  # on an object store each batch would be one more object
        assert j.segment_batches == 1
        await finish(commits, runner)

    asyncio.run(scenario())
    j.close()
    assert_loads(tmp_path, {"a": 1})


def test_records_of_both_stored_forms_load_and_the_later_one_wins(tmp_path: Path) -> None:
    from raybeam.record import TaskRecord, TaskSpec, TaskStatus
    from raybeam.recovery import load_state

    spec = TaskSpec(function="f", ray_options={"num_cpus": 0.5})
    older, newer = (TaskRecord(id=i, queue="q", spec=spec, created_at=1.0) for i in "ab")
    j = journal(tmp_path)
    # as a raybeam before the list form wrote them, then as this one writes them
    j.append([{"t": "task", "k": r.id, "d": r.to_json()} for r in (older, newer)])
    newer.transition(TaskStatus.RUNNING, now=2.0)
    j.append([{"t": "task", "k": "b", "d": newer.stored()}])
    j.close()
    state = load_state(journal(tmp_path))
    assert state.problems == []
    assert state.tasks == {"a": older, "b": newer}
    assert state.tasks["a"].spec is state.tasks["b"].spec  # equal specs are shared again
