"""A memory hog killed by Ray's memory monitor: retried, then FAILED for out of memory."""

from __future__ import annotations

import os
import time

import psutil

vm = psutil.virtual_memory()
# Kill at about 3 GiB above what the machine uses now: killing the hog then frees more than
# the buffer Ray's monitor wants below its threshold (5% of memory, at most 3 GiB), so the
# monitor has no reason to take a second worker.
threshold = min(0.95, (vm.total - vm.available + 3 * 2**30) / vm.total)
os.environ["RAY_memory_usage_threshold"] = f"{threshold:.3f}"
# checked every 0.1 s (Ray's default 0.25 s): the hog, 1 GiB a second, is caught sooner
os.environ["RAY_memory_monitor_refresh_ms"] = "100"

from _cluster import start_local_ray

import raybeam
from raybeam import task_queue

start_local_ray(num_cpus=1)


@task_queue(name="hog", cpu=1, retries=1)
def hog() -> str:
    chunks = []
    for _ in range(240):  # up to 12 GiB, touched page by page
        chunks.append(b"\x01" * (50 * 2**20))
        time.sleep(0.05)
    return "survived"


task = hog.put()
try:
    task.result(timeout=120)
    raise SystemExit("the hog was not killed")
except raybeam.TaskFailed:
    pass
info = task.info()
print("attempts:", info["attempts"], "reason:", info["failure_reason"])
# Ray's monitor may take the registry down in the same sweep; the attempt it interrupted then
# counts too, so 2 attempts at least.
assert info["attempts"] >= 2, info
assert info["failure_reason"].startswith("out of memory"), info
