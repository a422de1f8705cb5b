"""At-least-once delivery, proven by fault injection on a real local Ray (SPEC §2, §5)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import raybeam
from raybeam import TaskContext, task_queue
from raybeam.connection import call
from tests.support import scenarios
from tests.support.registry import live_registry

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def test_registry_killed_three_times_loses_and_repeats_nothing(
    ray_cluster: Any, tmp_path: Path, unique_name: str
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()

    @task_queue(name=unique_name, cpu=0.25, max_pending_tasks=1000)
    def work(i: int, context: TaskContext) -> int:
        time.sleep(0.05)
        (runs / f"{context.task_id}.{context.attempt}").touch()
        return i

    tasks = work.map(list(range(300)))
    for _ in range(3):
        time.sleep(1.0)
        ray.kill(live_registry())
    raybeam.wait(tasks, timeout=150)
    for i, task in enumerate(tasks):
        info = task.info()
        assert info["status"] == "COMPLETE", info
        assert info["result"] == i
        assert len([h for h in call("history", task.id) if h[0] == "COMPLETE"]) == 1
    ran = {p.name.split(".")[0] for p in runs.iterdir()}
    assert ran == {t.id for t in tasks}


def test_sigkilled_worker_is_retried_and_counted(
    ray_cluster: Any, tmp_path: Path, unique_name: str
) -> None:
    pid_file = tmp_path / "pid"

    @task_queue(name=unique_name, cpu=0.5, retries=2)
    def victim(context: TaskContext) -> int:
        if context.attempt == 1:
            pid_file.write_text(str(os.getpid()))
            time.sleep(60)
        return context.attempt

    task = victim.put()
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert task.result(timeout=60) == 2
    info = task.info()
    assert info["attempts"] == 2
    statuses = [h[0] for h in call("history", task.id)]
    assert statuses == ["PENDING", "RUNNING", "RETRY", "RUNNING", "COMPLETE"]


def test_purge_forgets_old_final_tasks_and_their_outputs(
    ray_cluster: Any, unique_name: str
) -> None:
    @task_queue(name=unique_name, cpu=0.5)
    def saver() -> None:
        raybeam.Output.from_bytes("a.txt", b"x").save()

    task = saver.put()
    task.result(timeout=60)
    folder = Path(ray_cluster.storage) / "outputs" / unique_name / task.id
    assert folder.exists()
    time.sleep(0.2)
    assert call("purge", 0.1) >= 1
    with pytest.raises(raybeam.TaskNotFound):
        raybeam.get_task(task.id)
    assert not folder.exists()


def run_scenario(name: str, tmp_path: Path, *args: str) -> str:
    return scenarios.run_scenario(name, str(tmp_path), *args, storage=str(tmp_path / "storage"))


def test_full_cluster_restart_resumes_and_corrupt_state_is_skipped(tmp_path: Path) -> None:
    # First cluster: one task completes, five are still queued when Ray stops.
    run_scenario("cluster_restart", tmp_path, "enqueue")
    journal = tmp_path / "storage" / "registry" / "journal"
    (journal / f"{10**9:016d}.jsonl").write_text('{"t": "task", "k": "x", "d": {"id"\n')
    # Second cluster, same storage: the first API call resumes the unfinished tasks.
    out = run_scenario("cluster_restart", tmp_path, "resume")
    assert "skipped" in out
    assert "all complete" in out


def test_out_of_memory_kill_is_retried_then_fails_with_reason(tmp_path: Path) -> None:
    out = run_scenario("oom", tmp_path)
    assert "out of memory" in out


def test_node_loss_moves_the_task_to_another_node(tmp_path: Path) -> None:
    out = run_scenario("node_loss", tmp_path)
    assert "completed elsewhere" in out
