"""Two Ray clusters on one storage: the second is refused while the first holds the lease,
takes over once the first one's registry stalls past its lease, and the stalled one, woken,
stores nothing more.

Phase `hold`: a registry takes the storage, stores a task, says its process id and waits;
the test stops that process (SIGSTOP) once the other cluster has been refused, and wakes it
(SIGCONT) once the other has taken over. Woken, its registry must refuse a new task with
StorageInUse naming the new holder. Phase `other`: refused while the first renews; then,
the first stalled and its lease expired, it takes over, and finds only the first task.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import ray
from _cluster import start_local_ray

import raybeam
from raybeam import task_queue
from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE
from raybeam.connection import call

root, phase = Path(sys.argv[1]), sys.argv[2]
start_local_ray(num_cpus=1)


@task_queue(name="fenced", cpu=1)
def square(x: int) -> int:
    return x * x


def wait_for(name: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not (root / name).exists():
        assert time.monotonic() < deadline, f"{name} never came"
        time.sleep(0.1)


if phase == "hold":
    task = square.put(7)
    assert task.result(timeout=60) == 49
    handle = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
    pid = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))
    (root / "registry_pid").write_text(str(pid))
    (root / "task_id").write_text(task.id)
    wait_for("woken", 150)  # stopped, taken over, woken meanwhile
    try:
        square.map([8])  # stored only once the lease is renewed: it never is
    except raybeam.StorageInUse as exc:
        print("fenced:", exc)
    else:
        raise AssertionError("a registry whose lease was taken stored a task")
    deadline = time.monotonic() + 30
    while True:  # and it answers nothing more
        try:
            call("ping")
        except raybeam.StorageInUse as exc:
            print("refuses calls:", exc)
            break
        assert time.monotonic() < deadline, "the fenced registry still answers"
        time.sleep(0.2)
    (root / "holder_done").touch()
else:
    wait_for("task_id", 120)  # the first cluster holds the storage by then
    print("storage", raybeam.settings().storage_url)
    try:
        call("ping")
    except raybeam.StorageInUse as exc:
        print("refused:", exc)
    else:
        raise AssertionError("a second cluster wrote to storage the first one holds")
    (root / "refused").touch()  # the test stops the first one's registry now
    deadline = time.monotonic() + 60
    while True:
        try:
            call("ping")
            break
        except raybeam.StorageInUse:
            assert time.monotonic() < deadline, "the lease never expired"
            time.sleep(0.5)
    waited = time.monotonic() - deadline + 60
    print(f"took over after {waited:.1f} s")
    task_id = (root / "task_id").read_text()
    assert raybeam.get_task(task_id).result(timeout=30) == 49
    print("the holder's task is there")
    (root / "took_over").touch()  # the test wakes the first one's registry now
    wait_for("holder_done", 120)
    call("ping")  # still the holder
    listed = raybeam.list_tasks(queue="fenced")
    assert [t.id for t in listed] == [task_id], listed
    print("only the first task is stored")
