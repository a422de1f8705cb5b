"""4. Scale: put latency, status latency and registry memory with more and more records held.

Records are made the way users make them: `map()` in chunks of at most 1,000 calls of a
trivial task, each run to COMPLETE (the registry keeps final records for its retention time).
"""

from __future__ import annotations

import time
from typing import Any

import raybeam
from benchmarks.common import (
    Context,
    Row,
    fresh_registry,
    ms,
    percentile,
    quiet,
    registry_pid,
    rss_mib,
    say,
)
from benchmarks.throughput import noop
from raybeam import connection, task_queue
from raybeam.enqueue import new_item

CHUNK = 1000
#: seconds between filling and measuring: latency with the records held, not while the
#: registry is still busy with the fill (finishing tasks, writing a snapshot)
SETTLE = 3.0


def held() -> int:
    count: int = connection.call("ping")["tasks"]
    return count


def fill(queue: Any, target: int) -> float:
    """Add COMPLETE records until the registry holds `target`; returns the seconds it took."""
    start = time.perf_counter()
    tasks: list[Any] = []
    with quiet():
        need = target - held()
        while need > 0:
            size = min(CHUNK, need)
            tasks += queue.map(list(range(size)))
            need -= size
        raybeam.wait(tasks, timeout=3600)
    return time.perf_counter() - start


def probe(queue: Any, samples: int) -> dict[str, list[float]]:
    """Latency of single stored puts and of single status reads, one at a time.

    A put here is the registry's `submit` of one call, answered once the task is stored: what
    a lone `.put()` or an HTTP enqueue waits for. (A `.put()` loop would run on a lease, and
    its puts would return before the registry answers; see benchmark 1.)
    """
    puts, reads = [], []
    definition = connection.call("queue_info", queue.name)
    with quiet():
        tasks = []
        for i in range(samples):
            item = new_item(definition, [i], {})
            start = time.perf_counter()
            connection.call("submit", queue.name, [item])
            puts.append(time.perf_counter() - start)
            tasks.append(raybeam.Task(item["id"]))
        for task in tasks:
            start = time.perf_counter()
            task.status()
            reads.append(time.perf_counter() - start)
        raybeam.wait(tasks, timeout=600)
    return {"put_ms": ms(puts), "status_ms": ms(reads)}


def run(ctx: Context) -> None:
    levels = ctx.args.scale_levels
    samples = ctx.args.scale_samples
    say(f"\n== 4. scale: put/status latency and registry memory at {levels} records ==")
    fresh_registry(ctx)
    queue = task_queue(noop, name="bench_scale", max_pending_tasks=max(levels) + 10 * CHUNK)
    queue.register()
    pid = registry_pid()
    with quiet():
        raybeam.wait(queue.map(list(range(20))))  # warm-up
    points: list[dict[str, Any]] = []
    empty_rss = rss_mib(pid)
    for level in levels:
        took = fill(queue, level)
        time.sleep(SETTLE)
        lat = probe(queue, samples)
        count = held()
        rss = rss_mib(pid)
        point = {
            "records": count,
            "fill_s": took,
            "put_p50": percentile(lat["put_ms"], 50),
            "put_p99": percentile(lat["put_ms"], 99),
            "status_p50": percentile(lat["status_ms"], 50),
            "rss_mib": rss,
        }
        points.append(point)
        say(
            f"  {count:>7,} records (filled in {took:.1f} s): put p50 {point['put_p50']:.2f} ms"
            f" p99 {point['put_p99']:.2f} ms, status p50 {point['status_p50']:.2f} ms, "
            f"registry RSS {rss:.0f} MiB"
        )
    first, last = points[0], points[-1]
    per_record = (last["rss_mib"] - first["rss_mib"]) * 2**20 / (last["records"] - first["records"])
    say(
        f"  registry memory: {per_record / 1024:.2f} KiB per record (RSS {empty_rss:.0f} MiB empty)"
    )
    ctx.data["scale"] = {"points": points, "per_record_bytes": per_record, "empty_rss": empty_rss}
    common = {"benchmark": "4. scale", "better": "lower"}
    low, high = f"{first['records']:,} records", f"{last['records']:,} records"
    ratio = last["put_p50"] / first["put_p50"]
    ctx.add(
        Row(
            **common,
            metric=f"put p50 at {high}",
            unit="ms",
            value=last["put_p50"],
            baseline_name=f"put p50 at {low}",
            baseline=first["put_p50"],
            target="within +-20%",
            met=0.8 <= ratio <= 1.2,
        )
    )
    for name, key, unit in (
        ("put p99", "put_p99", "ms"),
        ("status p50", "status_p50", "ms"),
        ("registry RSS", "rss_mib", "MiB"),
    ):
        ctx.add(
            Row(
                **common,
                metric=f"{name} at {high}",
                unit=unit,
                value=last[key],
                baseline_name=f"{name} at {low}",
                baseline=first[key],
            )
        )
