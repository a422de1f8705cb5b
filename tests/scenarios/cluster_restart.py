"""Phase `enqueue`: tasks are queued when the driver (and its local Ray) stops.
Phase `resume`: a new Ray on the same storage resumes them on the first API call."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# A new local Ray listens on another port: another cluster to the storage's lease, which it
# takes once the first cluster's lease has expired (SPEC §11); kept short here.
os.environ["RAYBEAM_LEASE_SECONDS"] = "3"

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
    deadline = time.monotonic() + 30
    while True:
        try:
            problems = call("ping")["load_problems"]
            break
        except raybeam.StorageInUse as exc:
            assert time.monotonic() < deadline, exc
            time.sleep(0.5)
    print("load problems:", problems)
    results = [raybeam.get_task(i).result(timeout=60) for i in ids]
    assert results == list(range(5)), results
    assert raybeam.list_tasks(queue="restart_q", status="COMPLETE", limit=10)
    print("all complete")
