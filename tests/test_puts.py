"""`.put()` in a loop: leased, batched puts on a real local Ray (raybeam.connection.Pipeline)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import raybeam
from raybeam import QueueFull, TaskContext, TaskStatus, connection, task_queue
from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE
from raybeam.connection import MAX_LEASE, call, pipeline
from raybeam.enqueue import enqueue
from raybeam.leases import LEASE_SECONDS
from tests.support.drivers import run_driver

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster"), pytest.mark.timeout(120)]


def completed_once(tasks: list[raybeam.Task]) -> bool:
    return all(sum(h[0] == "COMPLETE" for h in call("history", t.id)) == 1 for t in tasks) and all(
        t.status() is TaskStatus.COMPLETE for t in tasks
    )


def test_a_put_loop_leases_room_and_stores_every_task(unique_name: str, capsys: Any) -> None:
    @task_queue(name=unique_name, cpu=0.25, max_pending_tasks=5000)
    def echo(i: int) -> int:
        return i

    tasks = [echo.put(i) for i in range(600)]
    # the loop ran on leases (4, 16, 64 and 256 slots cover 340 puts; then 1024): most puts
    # were sent in batches, without waiting
    assert pipeline.queues[unique_name].want == 1024 < MAX_LEASE
    assert capsys.readouterr().out.count("Enqueued task: ") == 600
    # a read sends and settles every put first, so each task is there to read
    assert all(t.status() is not None for t in tasks[-5:])
    raybeam.wait(tasks, timeout=90)
    assert [t.result() for t in tasks] == list(range(600))
    assert completed_once(tasks)


def test_queue_full_is_raised_by_the_first_put_past_the_cap(unique_name: str) -> None:
    @task_queue(name=unique_name, gpu="H100", max_pending_tasks=20)
    def stuck() -> None: ...

    tasks = [stuck.put() for _ in range(20)]
    with pytest.raises(QueueFull, match="max_pending_tasks is 20"):
        stuck.put()
    assert {t.status() for t in tasks} == {TaskStatus.PENDING}
    raybeam.Task(tasks[0].id).cancel()
    tasks.append(stuck.put())  # room again once a task is final
    call("cancel", [t.id for t in tasks])


def test_leased_room_counts_against_other_callers_until_the_lease_ends(
    unique_name: str,
) -> None:
    @task_queue(name=unique_name, gpu="H100", max_pending_tasks=20)
    def stuck() -> None: ...

    mine = [stuck.put() for _ in range(3)]  # the second put leases 4 slots; the third uses one
    held = pipeline.queues[unique_name].slots
    assert held == 3
    # another caller (the HTTP API, the CLI) finds 20 - 3 tasks - 3 leased slots
    others = [enqueue(unique_name) for _ in range(20 - 3 - held)]
    with pytest.raises(QueueFull):
        enqueue(unique_name)
    time.sleep(LEASE_SECONDS + 0.1)  # a quiet client's lease ends on its own
    others += [enqueue(unique_name) for _ in range(held)]
    with pytest.raises(QueueFull):
        enqueue(unique_name)
    call("cancel", [t.id for t in mine] + others)


def test_an_unanswered_put_that_fails_raises_from_the_next_call(unique_name: str) -> None:
    @task_queue(name=unique_name, gpu="H100", max_pending_tasks=1)
    def stuck() -> None: ...

    first = stuck.put()
    # this process believes it holds a lease the registry never gave (as after a registry
    # restart): the put returns, and the registry's refusal comes back with the next call
    lease = pipeline.queues[unique_name]
    lease.slots, lease.usable_until = 5, time.monotonic() + 60
    refused = stuck.put()
    with pytest.raises(QueueFull) as err:
        first.status()
    assert refused.id in "".join(err.value.__notes__)
    assert first.status() is TaskStatus.PENDING
    with pytest.raises(raybeam.TaskNotFound):
        raybeam.get_task(refused.id)
    first.cancel()


def test_puts_unanswered_when_the_registry_dies_are_sent_again(
    tmp_path: Path, unique_name: str
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()

    @task_queue(name=unique_name, cpu=0.25, max_pending_tasks=5000)
    def work(i: int, context: TaskContext) -> int:
        (runs / f"{context.task_id}.{context.attempt}").touch()
        return i

    tasks = [work.put(i) for i in range(300)]
    assert pipeline.unanswered or pipeline.buffer
    # killed without a registry call from here first, so puts are still on their way
    ray.kill(ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE))
    tasks += [work.put(i) for i in range(300, 400)]
    raybeam.wait(tasks, timeout=100)
    assert [t.result() for t in tasks] == list(range(400))
    assert completed_once(tasks)
    assert {p.name.split(".")[0] for p in runs.iterdir()} == {t.id for t in tasks}


def test_a_driver_that_exits_right_after_a_put_loop_loses_nothing(
    ray_cluster: Any, tmp_path: Path, unique_name: str
) -> None:
    (tmp_path / "driver.py").write_text(
        textwrap.dedent(
            f"""
            from raybeam import task_queue

            @task_queue(name="{unique_name}", cpu=0.25, max_pending_tasks=1000)
            def square(x):
                return x * x

            for i in range(200):
                square.put(i)
            """
        )
    )
    out = run_driver(tmp_path, ray_cluster.address)
    ids = [line.split()[-1] for line in out.splitlines() if line.startswith("Enqueued task")]
    assert len(ids) == 200
    tasks = [raybeam.get_task(i) for i in ids]
    raybeam.wait(tasks, timeout=60)
    assert sorted(t.result() for t in tasks) == sorted(i * i for i in range(200))


def test_a_new_ray_session_starts_without_a_lease(unique_name: str) -> None:
    @task_queue(name=unique_name, cpu=0.25)
    def one() -> int:
        return 1

    lease = pipeline.queues.setdefault(unique_name, connection._LocalLease())
    lease.slots, lease.usable_until, lease.session = 50, time.monotonic() + 60, "old session"
    assert one.put().result(timeout=60) == 1
    assert lease.session == connection._session()


def test_puts_made_inside_a_task_are_stored_before_its_worker_exits(unique_name: str) -> None:
    @task_queue(name=f"{unique_name}_child", cpu=0.25, max_pending_tasks=1000)
    def child(i: int) -> int:
        return i

    @task_queue(name=unique_name, cpu=0.25, max_calls=1)  # one task per worker process
    def parent(n: int) -> list[str]:
        return [child.put(i).id for i in range(n)]

    ids = parent.put(100).result(timeout=60)
    children = [raybeam.get_task(i) for i in ids]
    raybeam.wait(children, timeout=60)
    assert [t.result() for t in children] == list(range(100))
