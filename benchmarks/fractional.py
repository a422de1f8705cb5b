"""8. Fractional CPUs: N no-op tasks on queues of cpu=0.1, 0.25 and 1, each against raw Ray
tasks of the same `num_cpus` on the same local Ray, with the CPU each run cost split among
the driver, Ray's daemons, the registry and the task workers.

Not in the default run: `python -m benchmarks fractional` (or `--only fractional`).
"""

from __future__ import annotations

from typing import Any

import ray

from benchmarks.common import Context, Measured, Row, fresh_registry, measure, registry_handle, say
from benchmarks.throughput import check_complete, make_queue, run_map, run_raw
from raybeam.dispatch import PACK_BELOW, pack_options, pack_size
from raybeam.lanes import Lane, capacity

TARGET = 1.5


def durations() -> dict[str, float]:
    """The registry's moving average of each queue's task run time (which decides packing)."""

    def look(self: Any) -> dict[str, float]:
        return dict(self.core.dispatch.durations)

    found: dict[str, float] = ray.get(registry_handle().__ray_call__.remote(look))
    return found


def sending(queue: str, cpu: float, backlog: int) -> str:
    """How the dispatcher sends this queue's backlog, as pack_size and Lane.room decide it."""
    cluster = ray.cluster_resources()  # type: ignore[no-untyped-call]
    options = {"num_cpus": cpu}
    duration = durations().get(queue)
    size = pack_size(duration, backlog, cluster.get("CPU", 1.0), options)
    # a pack asks for a whole CPU (this benchmark's Ray is one node)
    at_once = capacity(options if size == 1 else pack_options(options, cluster["CPU"]), cluster)
    ms = "unknown" if duration is None else f"{1000 * duration:.3f} ms"
    return (
        f"task run time {ms} (packs below {1000 * PACK_BELOW:.0f} ms): packs of {size} with "
        f"{backlog} waiting, Ray runs {at_once} at once, {Lane().room(at_once)} Ray tasks in flight"
    )


def one(ctx: Context, cpu: float, n: int, batch: int) -> dict[str, Any]:
    queue = make_queue(f"bench_cpu_{round(cpu * 100)}", n, cpu)
    queue.register()
    warm = max(200, batch // 4)
    # warm-up right before each timed run: Ray ends idle workers above num_cpus after a
    # second, and a cpu=0.1 lane needs up to 20 of them
    run_raw(warm, cpu)
    raw = measure(lambda: run_raw(n, cpu))
    check_complete(run_map(queue, warm, batch))
    beam = measure(lambda: run_map(queue, n, batch))
    check_complete(beam.result)
    how = sending(queue.name, cpu, batch)
    for label, m in (("raw Ray", raw), ("raybeam map()", beam)):
        ctx.data.setdefault("cpu_runs", []).append((f"cpu={cpu} {label}", n, m))
        say(
            f"  cpu={cpu} {label}: {n / m.seconds:,.0f} tasks/s ({m.seconds:.2f} s); {m.cpu_line(n)}"
        )
    ctx.note(f"fractional cpu={cpu}, after raybeam's run: {how}")
    return {"raw": raw, "raybeam": beam, "sending": how}


def run(ctx: Context) -> None:
    n, batch, cpus = ctx.args.fractional_tasks, ctx.args.batch, ctx.args.fractional_cpus
    say(
        f"\n== 8. fractional CPUs: {n:,} no-op tasks at cpu={', '.join(map(str, cpus))}, "
        f"map() in batches of {batch:,}, vs raw Ray of the same num_cpus =="
    )
    results: dict[float, dict[str, Any]] = {}
    for cpu in cpus:
        fresh_registry(ctx)  # each case on an empty registry
        results[cpu] = one(ctx, cpu, n, batch)
    ctx.data["fractional"] = {"n": n, "batch": batch, "results": results}
    for cpu, r in results.items():
        raw: Measured = r["raw"]
        beam: Measured = r["raybeam"]
        ctx.add(
            Row(
                benchmark="8. fractional CPUs",
                metric=f"{n} tasks, cpu={cpu}, map() in batches of {batch} + wait",
                unit="tasks/s",
                value=n / beam.seconds,
                baseline_name=f"raw Ray, num_cpus={cpu}",
                baseline=n / raw.seconds,
                better="higher",
                target=f">= {TARGET}x",
                met=raw.seconds >= TARGET * beam.seconds,
            )
        )
