"""1. Throughput: N trivial tasks put -> all COMPLETE, raybeam (map and a put loop) vs raw Ray."""

from __future__ import annotations

import time
from typing import Any

import ray

import raybeam
from benchmarks.common import Context, Row, fresh_registry, median, quiet, say, timed
from raybeam import connection, task_queue


def noop(x: int) -> int:
    return x


@ray.remote(num_cpus=1, max_retries=0)
def raw_noop(x: int) -> int:
    return x


def make_queue(name: str, n: int, cpu: float = 1) -> Any:
    # the same resources as the raw task (`cpu` CPUs); room for every task at once
    return task_queue(noop, name=name, cpu=cpu, max_pending_tasks=max(100, 4 * n))


def run_raw(n: int, cpu: float = 1) -> None:
    fn = raw_noop if cpu == 1 else raw_noop.options(num_cpus=cpu)
    ray.get([fn.remote(i) for i in range(n)])


def run_map(queue: Any, n: int, batch: int | None = None) -> list[Any]:
    """`n` tasks through `map()`, in calls of `batch` at most (all in one by default)."""
    step = batch or n
    tasks: list[Any] = []
    with quiet():
        for start in range(0, n, step):
            tasks += queue.map(list(range(start, min(n, start + step))))
    raybeam.wait(tasks, timeout=3600)
    return tasks


def run_puts(queue: Any, n: int) -> list[Any]:
    with quiet():
        tasks = [queue.put(i) for i in range(n)]
    raybeam.wait(tasks, timeout=3600)
    return tasks


def check_complete(tasks: list[Any]) -> None:
    ids = [t.id for t in tasks]
    bad: list[Any] = []
    for start in range(0, len(ids), 10_000):  # a bounded answer per call
        statuses = connection.call("statuses", ids[start : start + 10_000])
        bad += [s for s in statuses.values() if s != "COMPLETE"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(tasks)} tasks did not end COMPLETE: {bad[:5]}")


def run(ctx: Context) -> None:
    n, repeats = ctx.args.tasks, ctx.args.repeats
    say(f"\n== 1. throughput: {n} no-op tasks, put -> all COMPLETE, best of {repeats} ==")
    fresh_registry(ctx)
    queue = make_queue("bench_throughput", n)
    queue.register()
    # warm-up: Ray worker processes started, queue known, code paths imported
    run_raw(50)
    check_complete(run_map(queue, 50))
    times: dict[str, list[float]] = {"raw Ray": [], "raybeam map()": [], "raybeam put() loop": []}
    for _ in range(repeats):
        times["raw Ray"].append(timed(lambda: run_raw(n)))
        for name, runner in (("raybeam map()", run_map), ("raybeam put() loop", run_puts)):
            start = time.perf_counter()
            tasks = runner(queue, n)
            times[name].append(time.perf_counter() - start)
            check_complete(tasks)
    for name, samples in times.items():
        say(f"  {name}: " + ", ".join(f"{n / s:,.0f}/s ({s:.2f} s)" for s in samples))
    # the best round: the one least disturbed by whatever else the machine was doing
    rate = {name: n / min(samples) for name, samples in times.items()}
    ctx.data["throughput"] = {
        "n": n,
        "rates": rate,
        "median_rates": {name: n / median(s) for name, s in times.items()},
    }
    for name in ("raybeam map()", "raybeam put() loop"):
        ctx.add(
            Row(
                benchmark="1. throughput",
                metric=f"{n} tasks, {name} + wait",
                unit="tasks/s",
                value=rate[name],
                baseline_name="raw Ray f.remote + ray.get",
                baseline=rate["raw Ray"],
                better="higher",
                target=">= 0.8x",
                met=rate[name] >= 0.8 * rate["raw Ray"],
            )
        )
