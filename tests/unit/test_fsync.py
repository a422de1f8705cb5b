"""Durability on local disk (SPEC §10): a journal batch is fsync'ed before `append` returns
(one fsync per batch, unless RAYBEAM_FSYNC=0); a snapshot and its folder are fsync'ed before
the segments it replaces are removed; a new segment's folder is fsync'ed when it begins."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from raybeam import config
from raybeam.journal import Journal, blob_digest


class Events(list[tuple[str, str]]):
    """("fsync", path) / ("dir-fsync", path) / ("replace", dest) / ("rm", path), in order;
    `sizes`: each fsync'ed file's size as it was synced."""

    sizes: list[int]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Events:
    seen = Events()
    seen.sizes = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        seen.append(("dir-fsync" if is_dir else "fsync", path))
        real_fsync(fd)
        if not is_dir:
            seen.sizes.append(os.fstat(fd).st_size)

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        seen.append(("replace", str(dst)))

    real_rm: Callable[..., Any] = LocalFileSystem.rm

    def rm(self: LocalFileSystem, path: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(("rm", str(path)))
        return real_rm(self, path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(LocalFileSystem, "rm", rm)
    return seen


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_overrides", {})
    monkeypatch.delenv("RAYBEAM_FSYNC", raising=False)


def journal(tmp_path: Path) -> Journal:
    return Journal(LocalFileSystem(auto_mkdir=True), str(tmp_path / "registry"))


def entries(n: int) -> list[dict[str, Any]]:
    return [{"t": "task", "k": str(i), "d": {"i": i}} for i in range(n)]


def test_every_batch_is_fsynced_before_append_returns(tmp_path: Path, events: Events) -> None:
    j = journal(tmp_path)
    folder = str(tmp_path / "registry" / "journal")
    j.append(entries(64))
    first = list(events)
    j.append(entries(1))
    segment = os.path.join(folder, f"{1:016d}.jsonl")
    # the new segment's name, then the batch: one fsync of the file for 64 entries
    assert first == [("dir-fsync", folder), ("fsync", segment)]
    assert events == [*first, ("fsync", segment)]
    # each fsync covered the whole batch it acknowledged
    assert events.sizes == [os.path.getsize(segment) - len(_line(0)), os.path.getsize(segment)]


def _line(i: int) -> str:
    """The journal line of a batch of entry `i` alone."""
    return json.dumps([["task", str(i), {"i": i}]], separators=(",", ":")) + "\n"


def test_fsync_can_be_turned_off(
    tmp_path: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYBEAM_FSYNC", "0")
    j = journal(tmp_path)
    assert j.fsync is False
    for _ in range(3):
        j.append(entries(8))
    assert events == []
    assert Journal(LocalFileSystem(), str(tmp_path / "registry"), fsync=True).fsync is True


def test_a_rotation_fsyncs_the_folder_of_the_new_segment(
    tmp_path: Path, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("raybeam.journal.SEGMENT_BATCHES", 2)
    j = journal(tmp_path)
    for _ in range(3):
        j.append(entries(1))
    folder = str(tmp_path / "registry" / "journal")
    assert [e for e in events if e[0] == "dir-fsync"] == [("dir-fsync", folder)] * 2
    assert sum(1 for e in events if e[0] == "fsync") == 3


@pytest.mark.parametrize("fsync", ["1", "0"])
def test_a_snapshot_is_durable_before_the_segments_it_replaces_go(
    tmp_path: Path, events: Events, monkeypatch: pytest.MonkeyPatch, fsync: str
) -> None:
    monkeypatch.setenv("RAYBEAM_FSYNC", fsync)  # snapshots are durable either way
    j = journal(tmp_path)
    for i in range(3):
        j.append(entries(i + 1))
    seq = j.seal()
    events.clear()
    j.write_snapshot(['{"t":"task","k":"0","d":{"i":0}}'], seq)
    snapshots = str(tmp_path / "registry" / "snapshot")
    final = os.path.join(snapshots, f"{seq:016d}.json")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "dir-fsync", "rm"]
    assert events[0][1].startswith(final + ".") and events[0][1].endswith(".tmp")
    assert events[1:3] == [("replace", final), ("dir-fsync", snapshots)]
    state, problems = journal(tmp_path).load()
    assert state == {("task", "0"): {"i": 0}} and problems == []


def test_a_stored_blob_is_durable(tmp_path: Path, events: Events) -> None:
    j = journal(tmp_path)
    blob = b"a pickled function"
    name = f"{blob_digest(blob)}.pkl"
    j.store_blob(name, blob)
    blobs = str(tmp_path / "registry" / "blobs")
    assert [kind for kind, _ in events] == ["fsync", "replace", "dir-fsync"]
    assert events[1:] == [("replace", os.path.join(blobs, name)), ("dir-fsync", blobs)]
