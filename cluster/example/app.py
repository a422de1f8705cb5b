"""The queue module the cluster files deploy as shipped: one CPU queue and one A10G queue.

`raybeam serve ~/app/app.py` (the `ray up` files) and `serve_app.deployment:build_app`
(the RayService) register every `@task_queue` in this file when the API starts. To deploy
your own queues, point the cluster files at your folder instead (see cluster/README.md).
"""

from __future__ import annotations

import json
import socket

import ray

from raybeam import Output, task_queue


@task_queue(cpu=1, memory="512Mi")
def word_count(text: str) -> dict[str, object]:
    """Count the words of a text and save the counts as an output: runs on a CPU node.

    >>> word_count.put(text="to be or not to be")  # doctest: +SKIP
    """
    counts: dict[str, int] = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    Output.from_bytes("counts.json", json.dumps(counts, indent=2).encode()).save()
    return {"words": sum(counts.values()), "distinct": len(counts), "node": socket.gethostname()}


@task_queue(gpu="A10G", cpu=1, memory="2Gi", timeout=900)
def gpu_check() -> dict[str, object]:
    """Say which GPU the task was given: the autoscaler starts an A10G node for it.

    >>> gpu_check.put()  # doctest: +SKIP
    """
    context = ray.get_runtime_context()
    return {
        "gpu_ids": context.get_accelerator_ids().get("GPU", []),
        "node": socket.gethostname(),
        "resources": {k: v for k, v in ray.cluster_resources().items() if "accelerator" in k},
    }
