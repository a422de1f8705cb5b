from __future__ import annotations

from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from raybeam.journal import Journal


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
    j.snapshot([{"t": "task", "k": "0", "d": {"i": 0}}], j.seq)
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


def test_blobs_are_written_once(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.store_blob("f.pkl", b"one")
    j.store_blob("f.pkl", b"two")
    assert j.load_blob("f.pkl") == b"one"
    assert j.load_blob("missing.pkl") is None
