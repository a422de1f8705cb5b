"""Two Ray clusters on one storage: the second is refused while the first holds the lease.

Phase `hold`: a registry takes the storage, stores a task, and keeps running until told to
stop. Phase `other`: another cluster on the same storage must get StorageInUse naming the
holder; once the first has stopped and its lease expired, it takes over and reads the task.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _cluster import start_local_ray

import raybeam
from raybeam import task_queue
from raybeam.connection import call

root, phase = Path(sys.argv[1]), sys.argv[2]
start_local_ray(num_cpus=1)


@task_queue(name="fenced", cpu=1)
def square(x: int) -> int:
    return x * x


if phase == "hold":
    task = square.put(7)
    assert task.result(timeout=60) == 49
    (root / "task_id").write_text(task.id)
    while not (root / "stop").exists():
        time.sleep(0.1)
    print("holder stopping")
else:
    deadline = time.monotonic() + 120
    while not (root / "task_id").exists():  # the first cluster holds the storage by then
        assert time.monotonic() < deadline, "the first cluster never stored its task"
        time.sleep(0.1)
    print("storage", raybeam.settings().storage_url)
    try:
        call("ping")
    except raybeam.StorageInUse as exc:
        print("refused:", exc)
    else:
        raise AssertionError("a second cluster wrote to storage the first one holds")
    (root / "stop").touch()
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
