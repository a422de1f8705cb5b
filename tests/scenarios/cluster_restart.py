"""Phase `enqueue`: tasks are queued when the driver (and its local Ray) stops.
Phase `resume`: a new Ray on the same storage resumes them on the first API call."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _cluster import start_local_ray

import raybeam
from raybeam import task_queue
from raybeam.connection import call

root, phase = Path(sys.argv[1]), sys.argv[2]
start_local_ray(num_cpus=1)


@task_queue(name="restart_q", cpu=1)
def slow(i: int) -> int:
    time.sleep(0.3)
    return i


if phase == "enqueue":
    first = slow.put(-1)
    assert first.result(timeout=60) == -1
    tasks = slow.map(list(range(5)))
    (root / "ids.json").write_text(json.dumps([t.id for t in tasks]))
    print("stopping with", [t.status().value for t in tasks])
else:
    ids = json.loads((root / "ids.json").read_text())
    problems = call("ping")["load_problems"]
    print("load problems:", problems)
    results = [raybeam.get_task(i).result(timeout=60) for i in ids]
    assert results == list(range(5)), results
    assert raybeam.list_tasks(queue="restart_q", status="COMPLETE", limit=10)
    print("all complete")
