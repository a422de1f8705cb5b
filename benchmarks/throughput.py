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


def make_queue(name: str, n: int) -> Any:
    # the same resources as the raw task: one CPU; room for every task at once
    return task_queue(noop, name=name, cpu=1, max_pending_tasks=max(100, 4 * n))


def run_raw(n: int) -> None:
    ray.get([raw_noop.remote(i) for i in range(n)])


def run_map(queue: Any, n: int) -> list[Any]:
    with quiet():
        tasks = queue.map(list(range(n)))
    raybeam.wait(tasks)
    return list(tasks)


def run_puts(queue: Any, n: int) -> list[Any]:
    with quiet():
        tasks = [queue.put(i) for i in range(n)]
    raybeam.wait(tasks)
    return tasks


def check_complete(tasks: list[Any]) -> None:
    statuses = connection.call("statuses", [t.id for t in tasks])
    bad = [s for s in statuses.values() if s != "COMPLETE"]
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
