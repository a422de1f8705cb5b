"""SPEC §8 through Python on a real local Ray: idempotency keys, requeue, priorities,
delays, progress and a retry policy."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import raybeam
from raybeam import Retries, TaskContext, TaskStatus, task_queue
from raybeam.connection import call

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(120)]


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_the_same_idempotency_key_returns_the_first_task(tmp_path: Path, unique_name: str) -> None:
    runs = tmp_path / "runs"

    @task_queue(name=unique_name, cpu=0.25)
    def charge(amount: int) -> int:
        with open(runs, "a") as f:
            f.write(".")
        return amount

    first = charge.options(idempotency_key="order-1").put(5)
    again = charge.options(idempotency_key="order-1").put(5)
    assert again.id == first.id and first.result(timeout=60) == 5
    assert first.info()["idempotency_key"] == "order-1"
    with pytest.raises(raybeam.IdempotencyConflict, match="other arguments"):
        charge.options(idempotency_key="order-1").put(6)
    assert charge.options(idempotency_key="order-2").put(6).result(timeout=60) == 6
    assert runs.read_text() == ".."
    with pytest.raises(raybeam.InvalidConfiguration):
        charge.options(idempotency_key="k").map([1, 2])


def test_requeue_runs_a_final_task_again_as_a_new_one(tmp_path: Path, unique_name: str) -> None:
    fixed = tmp_path / "fixed"

    @task_queue(name=unique_name, cpu=0.25, retries=0)
    def flaky(x: int) -> int:
        if not fixed.exists():
            raise RuntimeError("not yet")
        return x * 3

    failed = [flaky.put(i) for i in range(3)]
    raybeam.wait(failed, timeout=60)
    with pytest.raises(raybeam.TaskNotFinal):
        flaky.options(delay=60).put(9).retry()
    fixed.touch()
    new = failed[0].retry()
    assert new.result(timeout=60) == 0
    assert new.info()["retry_of"] == failed[0].id
    old = failed[0].info()
    assert old["retried_as"] == new.id and old["status"] == "FAILED"
    rest = raybeam.retry_tasks(queue=unique_name, status="FAILED")
    assert sorted(t.info()["retry_of"] for t in rest) == sorted(t.id for t in failed[1:])
    assert sorted(t.result(timeout=60) for t in rest) == [3, 6]
    assert raybeam.retry_tasks(queue=unique_name, status="FAILED") == []  # requeued once


def test_higher_priority_starts_first_among_waiting_tasks(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=4, max_pending_tasks=1000)  # one at a time
    def step(name: str) -> float:
        time.sleep(0.05)
        return time.time()

    low = step.map([f"low-{i}" for i in range(40)])
    time.sleep(0.3)
    high = step.options(priority=10).put("high")
    raybeam.wait([*low, high], timeout=90)
    finished_before_high = sum(t.result() < high.result() for t in low)
    assert finished_before_high < 20, finished_before_high  # not behind the whole backlog
    assert high.info()["priority"] == 10 and low[0].info()["priority"] == 0


def test_delayed_tasks_wait_and_can_be_cancelled(tmp_path: Path, unique_name: str) -> None:
    ran = tmp_path / "ran"

    @task_queue(name=unique_name, cpu=0.25, ttl=1)
    def later(tag: str) -> str:
        (ran / tag).touch()
        return tag

    ran.mkdir()
    task = later.options(delay=2).put("delayed")
    at = later.options(run_at=datetime.now(timezone.utc) + timedelta(seconds=1)).put("at")
    cancelled = later.options(delay=2).put("cancelled")
    info = task.info()
    assert info["status"] == "PENDING" and info["scheduled_for"].endswith("Z")
    cancelled.cancel()
    # the ttl of 1 s counts from the scheduled time, so neither expires
    assert task.result(timeout=30) == "delayed" and at.result(timeout=30) == "at"
    done = task.info()
    assert seconds(done["started_at"]) - seconds(done["created_at"]) >= 1.9
    assert cancelled.status() is TaskStatus.CANCELLED
    assert sorted(p.name for p in ran.iterdir()) == ["at", "delayed"]


def test_progress_reaches_the_record_coalesced(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.25)
    def crunch(n: int, context: TaskContext) -> int:
        for i in range(n):
            context.progress((i + 1) / n)
            time.sleep(0.0005)
        context.progress(5)  # out of range: logged, never raised
        return n

    task = crunch.put(4000)
    seen = set()
    while task.status() is not TaskStatus.COMPLETE:
        seen.add(task.info()["progress"])
        time.sleep(0.05)
    assert task.info()["progress"] == 1.0
    assert len(seen - {None, 1.0}) >= 1  # a value in between, stored while it ran


def test_a_retry_policy_waits_with_next_attempt_at(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.25, retries=Retries(max_retries=1, initial_delay=1.5))
    def once(context: TaskContext) -> int:
        if context.attempt == 1:
            raise RuntimeError("first attempt fails")
        return context.attempt

    task = once.put()
    deadline = time.monotonic() + 30
    while task.status() is not TaskStatus.RETRY:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiting: dict[str, Any] = task.info()
    assert waiting["next_attempt_at"].endswith("Z")
    assert task.result(timeout=30) == 2
    history = call("history", task.id)
    assert [s for s, _ in history] == ["PENDING", "RUNNING", "RETRY", "RUNNING", "COMPLETE"]
    retry_at, second_start = history[2][1], history[3][1]
    assert second_start - retry_at >= 1.45  # initial_delay, not the short default
    assert task.info()["next_attempt_at"] is None
