"""Warm workers: on_start once, keep_warm_seconds, workers, max_containers, replacement."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

import raybeam
from raybeam import QueueDepthAutoscaler, TaskContext, TaskTimeout, task_queue
from raybeam.connection import call

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(90)]


def test_on_start_runs_once_for_many_tasks(tmp_path: Path, unique_name: str) -> None:
    loads = tmp_path / "loads"

    def load_model() -> str:
        with loads.open("a") as f:
            f.write("x")
        return "model-v1"

    @task_queue(name=unique_name, cpu=0.5, on_start=load_model, keep_warm_seconds=30)
    def infer(x: int, context: TaskContext) -> tuple[str, int, int]:
        return context.on_start_value, os.getpid(), x

    tasks = infer.map(list(range(8)))
    raybeam.wait(tasks, timeout=60)
    results = [t.result() for t in tasks]
    assert {r[0] for r in results} == {"model-v1"}
    assert len({r[1] for r in results}) == 1
    assert loads.read_text() == "x"
    info = tasks[0].info()
    assert info["stats"]["active_containers"] == 1
    assert len({t.info()["container_id"] for t in tasks}) == 1


def test_idle_container_stops_after_keep_warm_and_a_new_task_starts_another(
    unique_name: str,
) -> None:
    @task_queue(name=unique_name, cpu=0.5, keep_warm_seconds=2)
    def pid() -> int:
        return os.getpid()

    first = pid.put()
    first_pid = first.result(timeout=60)
    assert call("queue_stats")[unique_name]["active_containers"] == 1
    deadline = time.monotonic() + 10
    while call("queue_stats")[unique_name]["active_containers"] != 0:
        assert time.monotonic() < deadline, "the idle container was not stopped"
        time.sleep(0.2)
    stopped_after = time.monotonic() - (deadline - 10)
    assert stopped_after < 6
    assert pid.put().result(timeout=60) != first_pid


def test_max_containers_caps_concurrency(tmp_path: Path, unique_name: str) -> None:
    log = tmp_path / "log"

    @task_queue(
        name=unique_name,
        cpu=0.25,
        keep_warm_seconds=5,
        autoscaler=QueueDepthAutoscaler(max_containers=2),
    )
    def work(i: int) -> int:
        with log.open("a") as f:
            f.write(f"start {time.monotonic()}\n")
        time.sleep(0.3)
        with log.open("a") as f:
            f.write(f"end {time.monotonic()}\n")
        return os.getpid()

    tasks = work.map(list(range(10)))
    peak = 0
    while not all(t.status().is_final for t in tasks):
        peak = max(peak, call("queue_stats")[unique_name]["active_containers"])
        time.sleep(0.05)
    assert peak <= 2
    assert len({t.result() for t in tasks}) <= 2
    events = sorted(
        (float(line.split()[1]), 1 if line.startswith("start") else -1)
        for line in log.read_text().splitlines()
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most <= 2


def test_workers_run_tasks_concurrently_in_one_container(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5, keep_warm_seconds=5, workers=2)
    def nap(i: int) -> tuple[int, str]:
        with open("mine.txt", "w") as f:  # each task has its own scratch folder
            f.write(str(i))
        time.sleep(1.0)
        with open("mine.txt") as f:
            assert f.read() == str(i)
        return os.getpid(), os.getcwd()

    start = time.monotonic()
    tasks = nap.map([1, 2])
    raybeam.wait(tasks, timeout=60)
    (pid1, cwd1), (pid2, cwd2) = (t.result() for t in tasks)
    assert pid1 == pid2
    assert cwd1 != cwd2
    # both ran at once: well under the 2 s that one after the other would take
    assert time.monotonic() - start < 1.9 + 3  # container start included


def test_timeout_on_a_container_replaces_it(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5, keep_warm_seconds=30, timeout=1)
    def maybe_slow(sleep: float) -> int:
        time.sleep(sleep)
        return os.getpid()

    before = maybe_slow.put(0).result(timeout=60)
    stuck = maybe_slow.put(30)
    with pytest.raises(TaskTimeout):
        stuck.result(timeout=30)
    after = maybe_slow.put(0).result(timeout=60)
    assert after != before
    assert call("queue_stats")[unique_name]["active_containers"] == 1


def test_gpu_queue_keeps_one_process_across_tasks(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.25, gpu="A10G", keep_warm_seconds=10)
    def gpu_pid() -> tuple[int, str]:
        return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", "")

    results = [gpu_pid.put().result(timeout=60) for _ in range(3)]
    assert len({pid for pid, _ in results}) == 1
    assert all(devices for _, devices in results)


def test_plain_gpu_queue_with_max_calls_zero_reuses_its_worker(unique_name: str) -> None:
    # Ray's default for GPU tasks (max_calls=1) ends the worker after every task; with
    # max_calls=0 the worker stays and takes the next one. Ray still may start a second
    # worker now and then (a lease handed back late under load), so reuse is counted, not
    # a single process demanded.
    @task_queue(name=unique_name, cpu=0.25, gpu="A10G", max_calls=0)
    def warm_pid() -> int:
        return os.getpid()

    @task_queue(name=unique_name + "_cold", cpu=0.25, gpu="A10G")
    def cold_pid() -> int:
        return os.getpid()

    warm = [warm_pid.put().result(timeout=60) for _ in range(6)]
    assert len(set(warm)) <= 3, warm
    assert max(warm.count(pid) for pid in warm) >= 3, warm
    cold = [cold_pid.put().result(timeout=60) for _ in range(3)]
    assert len(set(cold)) == 3, cold


def test_retries_work_on_containers(unique_name: str, ray_cluster: Any) -> None:
    @task_queue(name=unique_name, cpu=0.5, keep_warm_seconds=5, retries=2)
    def flaky(context: TaskContext) -> int:
        if context.attempt == 1:
            raise RuntimeError("first attempt fails")
        return context.attempt

    task = flaky.put()
    assert task.result(timeout=60) == 2
    assert task.info()["attempts"] == 2
