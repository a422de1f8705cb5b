"""`raybeam.wait` without Ray: its polls of the registry, a window of ids at a time."""

from __future__ import annotations

from typing import Any

import pytest

from raybeam import task as task_module
from raybeam.task import WAIT_WINDOW, Task, wait


class Registry:
    """Answers `wait_any` as the registry does: the ids of the window that are final."""

    def __init__(self, final: set[str]) -> None:
        self.final = final
        self.windows: list[list[str]] = []

    def call(self, method: str, ids: list[str], timeout: float) -> list[str]:
        assert method == "wait_any" and len(ids) <= WAIT_WINDOW
        self.windows.append(list(ids))
        return [t for t in ids if t in self.final]


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(task_module.time, "sleep", slept.append)
    return slept


def tasks(n: int) -> list[Task]:
    return [Task(f"t{i}") for i in range(n)]


def test_tasks_found_final_are_walked_a_window_at_a_time_without_pauses(
    monkeypatch: pytest.MonkeyPatch, pauses: list[float]
) -> None:
    some = tasks(5 * WAIT_WINDOW + 10)
    registry = Registry({t.id for t in some})
    monkeypatch.setattr(task_module.connection, "call", registry.call)
    assert wait(some + some[:3]) == some + some[:3]  # each id is asked about once
    assert [len(w) for w in registry.windows] == [WAIT_WINDOW] * 5 + [10]
    assert pauses == []


def test_a_window_partly_final_pauses_then_asks_again_with_the_rest_and_more(
    monkeypatch: pytest.MonkeyPatch, pauses: list[float]
) -> None:
    some = tasks(WAIT_WINDOW + 5)
    registry = Registry({t.id for t in some[::2]})

    def finish_the_rest(_: float) -> None:
        pauses.append(_)
        registry.final |= {t.id for t in some}

    monkeypatch.setattr(task_module.time, "sleep", finish_the_rest)
    monkeypatch.setattr(task_module.connection, "call", registry.call)
    wait(some)
    first, second = registry.windows
    assert first == [t.id for t in some[:WAIT_WINDOW]] and len(pauses) == 1
    # the window's unfinished ids first, then the ids not asked about yet
    assert second == first[1::2] + [t.id for t in some[WAIT_WINDOW:]]


def test_a_wait_past_its_timeout_says_how_many_are_left(
    monkeypatch: pytest.MonkeyPatch, pauses: list[float]
) -> None:
    registry = Registry(set())
    monkeypatch.setattr(task_module.connection, "call", registry.call)
    with pytest.raises(TimeoutError, match="3 of 3 tasks not final after 0 s"):
        wait(tasks(3), timeout=0)


def test_an_empty_wait_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: Any) -> None:
        raise AssertionError("no call expected")

    monkeypatch.setattr(task_module.connection, "call", never)
    assert wait([]) == []
