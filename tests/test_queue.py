"""The queue's behaviour on a real local Ray cluster (SPEC §1 and §2)."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import raybeam
from raybeam import (
    InvalidArguments,
    QueueFull,
    TaskCancelled,
    TaskContext,
    TaskExpired,
    TaskFailed,
    TaskNotFound,
    TaskStatus,
    TaskTimeout,
    task_queue,
)
from raybeam.connection import call
from tests.support.drivers import run_driver

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(90)]

RECORD_KEYS = {
    "id", "queue", "status", "created_at", "started_at", "ended_at", "updated_at",
    "container_id", "attempts", "result", "failure_reason", "outputs", "stats",
    # SPEC §8
    "priority", "scheduled_for", "idempotency_key", "retry_of", "retried_as", "progress",
    "next_attempt_at",
}  # fmt: skip


def wait_for_status(task: raybeam.Task, status: TaskStatus, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while task.status() is not status:
        assert time.monotonic() < deadline, f"{task.id} never reached {status}: {task.info()}"
        time.sleep(0.05)


def test_trivial_task_status_result_and_record(unique_name: str, capsys: Any) -> None:
    @task_queue(name=unique_name, cpu=0.5)
    def double(x: int) -> dict[str, int]:
        return {"result": x * 2}

    task = double.put(x=10)
    assert f"Enqueued task: {task.id}" in capsys.readouterr().out
    assert str(task) == task.id
    assert task.result(timeout=60) == {"result": 20}
    assert task.status() is TaskStatus.COMPLETE
    info = task.info()
    assert set(info) == RECORD_KEYS
    assert info["queue"] == unique_name
    assert info["attempts"] == 1
    assert info["result"] == {"result": 20}
    assert info["container_id"]
    assert info["stats"] == {"active_containers": 0, "queue_depth": 0}
    for key in ("created_at", "started_at", "ended_at", "updated_at"):
        assert info[key].endswith("Z")
    assert info["created_at"] <= info["started_at"] <= info["ended_at"]


def test_non_json_results_come_back_as_objects(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5)
    def make_set(n: int) -> set[int]:
        return set(range(n))

    task = make_set.put(3)
    assert task.result(timeout=60) == {0, 1, 2}
    assert task.info()["result"] is None


def test_retry_then_succeed_counts_attempts(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5, retries=3)
    def flaky(context: TaskContext) -> int:
        if context.attempt < 3:
            raise RuntimeError(f"attempt {context.attempt} fails")
        return context.attempt

    task = flaky.put()
    assert task.result(timeout=60) == 3
    info = task.info()
    assert info["attempts"] == 3
    assert info["status"] == "COMPLETE"
    assert info["failure_reason"] is None


def test_always_failing_task_fails_after_one_plus_retries(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5, retries=2)
    def broken(x: int) -> None:
        raise ValueError(f"bad value {x}")

    task = broken.put(7)
    with pytest.raises(TaskFailed) as err:
        task.result(timeout=60)
    assert "ValueError: bad value 7" in err.value.traceback
    assert "Traceback" in err.value.traceback
    info = task.info()
    assert info["status"] == "FAILED"
    assert info["attempts"] == 3
    assert "bad value 7" in info["failure_reason"]


def test_retry_for_mismatch_fails_after_one_attempt(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5, retries=3, retry_for=[KeyError])
    def picky() -> None:
        raise ValueError("not retried")

    task = picky.put()
    with pytest.raises(TaskFailed):
        task.result(timeout=60)
    assert task.info()["attempts"] == 1


def test_timeout_ends_the_task_as_timeout_without_retry(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5, timeout=1, retries=3)
    def slow() -> None:
        time.sleep(60)

    task = slow.put()
    with pytest.raises(TaskTimeout):
        task.result(timeout=30)
    info = task.info()
    assert info["status"] == "TIMEOUT"
    assert info["attempts"] == 1
    assert "timeout of 1 s" in info["failure_reason"]


def test_options_override_timeout_per_call(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5, timeout=60)
    def slow() -> None:
        time.sleep(60)

    task = slow.options(timeout=1).put()
    with pytest.raises(TaskTimeout):
        task.result(timeout=30)


def test_cancel_pending_and_running(unique_name: str) -> None:
    @task_queue(name=unique_name + "_gpu", gpu="H100")
    def never_scheduled() -> None: ...

    @task_queue(name=unique_name, cpu=0.5)
    def sleeper(context: TaskContext) -> None:
        time.sleep(60)

    pending = never_scheduled.put()
    running = sleeper.put()
    wait_for_status(running, TaskStatus.RUNNING)
    assert pending.status() is TaskStatus.PENDING
    pending.cancel()
    running.cancel()
    for task in (pending, running):
        assert task.status() is TaskStatus.CANCELLED
        with pytest.raises(TaskCancelled):
            task.result(timeout=10)
    running.cancel()  # cancelling a final task changes nothing
    assert running.status() is TaskStatus.CANCELLED


def test_queue_full_rejects_puts_past_max_pending(unique_name: str) -> None:
    @task_queue(name=unique_name, gpu="H100", max_pending_tasks=2)
    def stuck() -> None: ...

    tasks = [stuck.put(), stuck.put()]
    with pytest.raises(QueueFull, match="max_pending_tasks is 2"):
        stuck.put()
    assert all(t.status() is TaskStatus.PENDING for t in tasks)
    tasks[0].cancel()
    tasks.append(stuck.put())  # room again once a task is final
    for t in tasks:
        t.cancel()


def test_ttl_expires_a_task_that_never_starts(unique_name: str) -> None:
    @task_queue(name=unique_name, gpu="H100", ttl=1)
    def stuck() -> None: ...

    task = stuck.put()
    with pytest.raises(TaskExpired):
        task.result(timeout=20)
    info = task.info()
    assert info["status"] == "EXPIRED"
    assert info["attempts"] == 0


def test_map_and_wait(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5)
    def square(x: int) -> int:
        return x * x

    tasks = square.map([{"x": i} for i in range(12)])
    assert raybeam.wait(tasks, progress=True, timeout=60) == tasks
    assert all(t.status() is TaskStatus.COMPLETE for t in tasks)
    assert [t.result() for t in tasks] == [i * i for i in range(12)]
    listed = raybeam.list_tasks(queue=unique_name, status="complete", limit=5)
    assert listed == list(reversed(tasks))[:5]


def test_gpu_task_sees_exactly_one_gpu_and_unknown_type_stays_pending(unique_name: str) -> None:
    @task_queue(name=unique_name, gpu="A10G", cpu=0.5)
    def gpus() -> list[int]:
        import ray

        return [int(g) for g in ray.get_gpu_ids()]

    @task_queue(name=unique_name + "_h100", gpu="H100", cpu=0.5)
    def h100() -> None: ...

    assert len(gpus.put().result(timeout=60)) == 1
    stuck = h100.put()
    time.sleep(1.5)
    assert stuck.status() is TaskStatus.PENDING
    stuck.cancel()


def test_ordered_gpu_types_fall_back_to_one_the_cluster_has(unique_name: str) -> None:
    @task_queue(name=unique_name, gpu=["H100", "A10G"], cpu=0.5)
    def gpus() -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    assert gpus.put().result(timeout=60) != ""


def test_bad_arguments_are_refused_at_put(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5)
    def f(x: int) -> int:
        return x

    with pytest.raises(InvalidArguments, match="x"):
        f.put(y=1)  # type: ignore[call-arg]
    with pytest.raises(InvalidArguments):
        f.put(1, 2)  # type: ignore[call-arg]
    assert raybeam.list_tasks(queue=unique_name) == []


def test_get_task_and_list_tasks(unique_name: str) -> None:
    with pytest.raises(TaskNotFound):
        raybeam.get_task("00000000-0000-0000-0000-000000000000")

    @task_queue(name=unique_name, cpu=0.5)
    def f(x: int) -> int:
        return x

    first, second = f.put(1), f.put(2)
    assert raybeam.get_task(first.id) == first
    assert raybeam.list_tasks(queue=unique_name) == [second, first]
    with pytest.raises(ValueError, match="expected one of"):
        raybeam.list_tasks(status="DONE")


def test_a_driver_that_exits_at_once_loses_nothing(
    ray_cluster: Any, tmp_path: Path, unique_name: str
) -> None:
    # A queue in a module of the user's project that the workers cannot import.
    project = tmp_path / "userproj"
    (project / "mypkg").mkdir(parents=True)
    (project / "mypkg" / "__init__.py").write_text("")
    (project / "mypkg" / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    (project / "mypkg" / "jobs.py").write_text(
        textwrap.dedent(
            f"""
            import time
            from raybeam import task_queue
            from mypkg.helpers import triple

            @task_queue(name="{unique_name}", cpu=0.5)
            def work(x):
                time.sleep(1)
                return triple(x)
            """
        )
    )
    (project / "driver.py").write_text("from mypkg.jobs import work\nprint('ID', work.put(5).id)\n")
    out = run_driver(project, ray_cluster.address)
    task_id = next(line.split()[1] for line in out.splitlines() if line.startswith("ID"))
    assert raybeam.get_task(task_id).result(timeout=60) == 15


def test_tiny_tasks_share_ray_tasks_and_each_keeps_its_own_record(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.5, timeout=3, max_pending_tasks=1000)
    def tiny(i: int, context: TaskContext) -> tuple[int, int, int]:
        if i == 150:
            time.sleep(30)  # times out inside a pack
        return i, context.attempt, os.getpid()

    raybeam.wait(tiny.map(list(range(40))), timeout=60)  # learns that its tasks are tiny
    tasks = tiny.map(list(range(300)))
    raybeam.wait(tasks, timeout=90)
    for i, task in enumerate(tasks):
        if i == 150:
            assert task.status() is TaskStatus.TIMEOUT
            continue
        value, attempt, _ = task.result()
        assert value == i
        info = task.info()
        assert info["status"] == "COMPLETE"
        # a member that never started when its pack was stopped runs again, unpenalised
        assert info["attempts"] == attempt == 1
    assert sum(h[0] == "COMPLETE" for t in tasks for h in call("history", t.id)) == 299


def test_finished_tasks_leave_no_timers_behind(unique_name: str) -> None:
    import ray

    from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE

    @task_queue(name=unique_name, cpu=0.25, timeout=600, ttl=600)
    def quick(i: int) -> int:
        return i

    tasks = quick.map(list(range(30)))
    raybeam.wait(tasks, timeout=60)
    registry = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
    ids = {t.id for t in tasks}
    left = ray.get(
        registry.__ray_call__.remote(lambda self: [i for i in ids if self.core.timers.has(i)])
    )
    assert left == []
