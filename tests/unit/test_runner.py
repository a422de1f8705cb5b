"""The worker side without a cluster: start reports go to the registry of the moment."""

from __future__ import annotations

import os
from typing import Any

import pytest

from raybeam import runner


class Handle:
    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name, self.log = name, log

    @property
    def started(self) -> Any:
        handle = self

        class Method:
            @staticmethod
            def remote(task_id: str, run: str, container_id: str) -> None:
                handle.log.append((handle.name, task_id))

        return Method


def test_each_report_finds_the_registry_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[tuple[str, str]] = []
    current = [Handle("first", log)]
    monkeypatch.setattr(runner.ray, "get_actor", lambda name, namespace: current[0])
    runner._report_starts([(("a", "r1"), "w")])
    current[0] = Handle("restarted", log)  # the registry died and came back
    runner._report_starts([(("b", "r2"), "w"), (("c", "r3"), "w")])
    assert log == [("first", "a"), ("restarted", "b"), ("restarted", "c")]


def test_no_registry_loses_the_report_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str, namespace: str) -> Any:
        raise ValueError("no actor")

    monkeypatch.setattr(runner.ray, "get_actor", missing)
    runner._report_starts([(("a", "r1"), "w")])  # the outcome carries the start instead


def test_an_attempt_gets_an_empty_folder_and_a_used_one_is_removed(tmp_path: Any) -> None:
    from raybeam.runner import _ScratchFolders

    folders = _ScratchFolders()
    first = folders.take()
    folders.give_back(first)  # left empty: kept for the next attempt
    assert folders.take() == first
    with open(os.path.join(first, "left.txt"), "w") as f:
        f.write("x")
    folders.give_back(first)  # something left in it: removed
    assert not os.path.exists(first)
    second = folders.take()
    assert second != first and os.listdir(second) == []
    folders.give_back(second)


def test_spares_of_workers_that_exited_are_swept(tmp_path: Any) -> None:
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its process id now names nobody (reuse within the test is unlikely)
    root = tmp_path
    for name in (f"raybeam-{gone.pid}-a", f"raybeam-{gone.pid}-b", f"raybeam-{os.getpid()}-c"):
        (root / name).mkdir()
    (root / f"raybeam-{gone.pid}-b" / "kept.txt").write_text("a file: not a spare")
    (root / "raybeam-output-x.zip").write_text("")
    (root / "other").mkdir()
    assert runner.sweep_spares(str(root)) == 1
    left = sorted(p.name for p in root.iterdir())
    assert left == sorted(
        [f"raybeam-{gone.pid}-b", f"raybeam-{os.getpid()}-c", "raybeam-output-x.zip", "other"]
    )
