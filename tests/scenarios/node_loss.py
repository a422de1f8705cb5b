"""A multi-node cluster on one machine: the node running a task goes away, and the task
completes on another node."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray
from ray.cluster_utils import Cluster

import raybeam
from raybeam import TaskContext, task_queue

root = Path(sys.argv[1])
cluster = Cluster(
    initialize_head=True,
    head_node_args={
        "num_cpus": 0,
        "temp_dir": os.environ["RB_SCENARIO_TMP"],
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
    },
)
nodes = [cluster.add_node(num_cpus=1, resources={"side": 1}) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level=logging.ERROR)


@task_queue(name="mover", cpu=1, retries=2)
def where(context: TaskContext) -> str:
    node = ray.get_runtime_context().get_node_id()
    (root / f"attempt-{context.attempt}").write_text(node)
    if context.attempt == 1:
        time.sleep(60)
    return node


task = where.put()
deadline = time.monotonic() + 30
while not (root / "attempt-1").exists():
    assert time.monotonic() < deadline, task.info()
    time.sleep(0.1)
first = (root / "attempt-1").read_text()
victim = next(n for n in nodes if n.node_id == first)
cluster.remove_node(victim, allow_graceful=False)
second = task.result(timeout=90)
info = task.info()
print("attempts:", info["attempts"], "first:", first[:8], "second:", second[:8])
assert second != first
print("history:", raybeam.connection.call("history", task.id))
print("completed elsewhere")
ray.shutdown()
cluster.shutdown()
