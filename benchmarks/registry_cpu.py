"""The registry's CPU per task: 4,000 no-op tasks through `map()` and through a `.put()`
loop on a private local Ray (2 CPUs), with the registry process's user+system CPU time
read from /proc before and after. Run it on two checkouts (or with `RAYBEAM_FSYNC=0`) to
compare: `python -m benchmarks.registry_cpu`."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time

TASKS = 4000


def noop(x: int) -> int:
    return x


def main() -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from tests.support.offline import keep_on_loopback

    keep_on_loopback()  # Ray's cloud-metadata probes stay on this machine
    root = tempfile.mkdtemp(prefix="rbx-", dir="/tmp")
    os.environ["RAYBEAM_STORAGE"] = os.path.join(root, "storage")
    import ray

    import raybeam
    from raybeam import task_queue
    from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        _temp_dir=os.path.join(root, "ray"),
    )
    try:
        queue = task_queue(noop, name="noop", cpu=1, max_pending_tasks=10 * TASKS)
        raybeam.wait(queue.map(list(range(500))))  # warm: workers, the registry, packing
        handle = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
        pid = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()))

        def cpu_seconds() -> float:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().split(")")[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        shapes = {
            "map()": lambda: queue.map(list(range(TASKS))),
            ".put() loop": lambda: [queue.put(i) for i in range(TASKS)],
        }
        for label, enqueue in shapes.items():
            cpu0, t0 = cpu_seconds(), time.monotonic()
            with contextlib.redirect_stdout(io.StringIO()):
                tasks = enqueue()
            raybeam.wait(tasks)
            cpu1, t1 = cpu_seconds(), time.monotonic()
            print(
                f"{label}: {TASKS / (t1 - t0):,.0f} tasks/s, "
                f"registry CPU {1000 * (cpu1 - cpu0) / TASKS:.3f} ms per task"
            )
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
