"""The registry's CPU per task: no-op tasks through `map()` and through a `.put()` loop on a
private local Ray (2 CPUs), with the registry process's user and system CPU time read from
/proc before and after, and its threads' context switches.

The baseline in the same run is Ray's floor for the same traffic: a bare actor (no
records, no journal, no lanes) that takes the same `map()` batch, sends it to Ray in the
packs raybeam would send (`dispatch.pack_size`, their outcomes returned together) and waits for
every outcome. Whatever raybeam does per task comes on top of that floor. Run it on two
checkouts (or with `RAYBEAM_FSYNC=0`) to compare: `python -m benchmarks.registry_cpu`.
The three run in turn for RAYBEAM_BENCH_ROUNDS rounds (3), and the medians are compared:
one run of either swings by ±25% on a small machine."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import io
import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from raybeam.dispatch import pack_size

TASKS = int(os.environ.get("RAYBEAM_BENCH_TASKS", "4000"))
#: rounds of (map(), .put() loop, Ray's floor); medians are reported
ROUNDS = int(os.environ.get("RAYBEAM_BENCH_ROUNDS", "3"))
#: the pack size raybeam's dispatch picks for no-op tasks with this backlog on 2 CPUs
PACK = pack_size(1e-4, TASKS, 2.0, {"num_cpus": 1})


def noop(x: int) -> int:
    return x


def process_cpu(pid: int) -> Callable[[], tuple[float, float, int]]:
    """A reader of a process's (user s, system s, context switches of all its threads)."""
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> tuple[float, float, int]:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().split(")")[1].split()
        switches = 0
        for status in glob.glob(f"/proc/{pid}/task/*/status"):
            with contextlib.suppress(OSError), open(status) as f:
                switches += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        return int(fields[11]) / tick, int(fields[12]) / tick, switches

    return read


def floor_actor() -> Any:
    """Ray's floor: the registry's traffic with none of its bookkeeping."""
    import ray

    from raybeam.wire import succeeded

    @ray.remote(max_retries=0)
    def pack(members: list[tuple[str, str]]) -> list[Any]:
        return [succeeded(len(payload), []) for _, payload in members]

    @ray.remote(num_cpus=0)
    class Floor:
        def __init__(self) -> None:
            self.done = 0
            self.errors: list[str] = []
            self.consuming: set[asyncio.Task[None]] = set()
            self.changed = asyncio.Event()

        async def submit(self, items: list[dict[str, Any]]) -> list[str]:
            for start in range(0, len(items), PACK):
                chunk = [(it["id"], it["payload"]) for it in items[start : start + PACK]]
                consuming = asyncio.get_running_loop().create_task(
                    self._consume(pack.remote(chunk))
                )
                self.consuming.add(consuming)  # the loop keeps only a weak reference
                consuming.add_done_callback(self.consuming.discard)
            return [it["id"] for it in items]

        async def _consume(self, ref: Any) -> None:
            try:
                outcomes = await ref  # awaited first: `done += len(await ...)` loses counts
                self.done += len(outcomes)
                self.changed.set()
            except Exception as exc:
                self.errors.append(repr(exc))
                self.changed.set()

        async def wait_for(self, count: int) -> None:
            while self.done < count and not self.errors:
                self.changed.clear()
                await self.changed.wait()

        def pid(self) -> int:
            return os.getpid()

    return Floor.remote()  # type: ignore[attr-defined]


def report(
    label: str, seconds: float, before: tuple[float, float, int], after: tuple[float, float, int]
) -> float:
    user, system = (after[0] - before[0]) / TASKS, (after[1] - before[1]) / TASKS
    switches = (after[2] - before[2]) / TASKS
    print(
        f"{label}: {TASKS / seconds:,.0f} tasks/s, CPU {1000 * (user + system):.3f} ms per task "
        f"(user {1000 * user:.3f}, system {1000 * system:.3f}), "
        f"{switches:.1f} context switches per task"
    )
    return user + system


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
        registry = process_cpu(ray.get(handle.__ray_call__.remote(lambda self: os.getpid())))

        shapes = {
            "map()": lambda: queue.map(list(range(TASKS))),
            ".put() loop": lambda: [queue.put(i) for i in range(TASKS)],
        }
        floor = floor_actor()
        floor_cpu = process_cpu(ray.get(floor.pid.remote(), timeout=60))
        items = queue._items([((i,), {}) for i in range(TASKS)])
        ray.get(floor.submit.remote(items[:500]))  # warm, as the registry was
        ray.get(floor.wait_for.remote(500), timeout=60)
        sent = 500
        cost: dict[str, list[float]] = {}
        for _ in range(ROUNDS):  # interleaved: this machine's speed drifts between minutes
            for label, enqueue in shapes.items():
                before, t0 = registry(), time.monotonic()
                with contextlib.redirect_stdout(io.StringIO()):
                    tasks = enqueue()
                raybeam.wait(tasks)
                seconds = time.monotonic() - t0
                cost.setdefault(label, []).append(
                    report(f"registry, {label}", seconds, before, registry())
                )
            before, t0 = floor_cpu(), time.monotonic()
            ray.get(floor.submit.remote(items))
            sent += TASKS
            ray.get(floor.wait_for.remote(sent), timeout=600)
            errors = ray.get(floor.__ray_call__.remote(lambda self: self.errors))
            assert not errors, errors
            seconds = time.monotonic() - t0
            cost.setdefault("floor", []).append(
                report("Ray's floor, map()", seconds, before, floor_cpu())
            )
        base = statistics.median(cost.pop("floor"))
        print(f"medians of {ROUNDS} rounds: Ray's floor {1000 * base:.3f} ms per task")
        for label, seconds in cost.items():
            mid = statistics.median(seconds)
            print(f"registry {label}: {1000 * mid:.3f} ms per task, {mid / base:.2f}x the floor")
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
