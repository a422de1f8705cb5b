"""9. Sustained throughput: many no-op tasks (cpu=1) through `map()` in batches and through a
`.put()` loop, each against the median of three 2,000-task bursts of the same shape on the
same queue, measured just before it on the same registry; the registry's memory (RSS) after
each.

Not in the default run: `python -m benchmarks sustained` (or `--only sustained`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    Context,
    Measured,
    Row,
    fresh_registry,
    measure,
    quiet,
    registry_pid,
    rss_mib,
    say,
)
from benchmarks.throughput import check_complete, make_queue, run_map, run_puts

TARGET = 0.9
#: bursts run before the sustained run; their median is its baseline
BURSTS = 3


def shape(
    ctx: Context,
    key: str,
    label: str,
    big: int,
    burst: int,
    runner: Callable[[Any, int], list[Any]],
) -> dict[str, Any]:
    fresh_registry(ctx)  # each shape on an empty registry
    queue = make_queue(f"bench_sustained_{key}", big + burst)
    queue.register()
    pid = registry_pid()
    with quiet():
        check_complete(runner(queue, 200))  # warm-up: workers, packing decided
    rss_before = rss_mib(pid)
    out: dict[str, Any] = {"rss_start": rss_before}
    for name, n in (("burst", burst), ("sustained", big)):
        # the burst lasts half a second, so one is noise: the median of BURSTS is the baseline
        runs = [
            measure(functools.partial(runner, queue, n)) for _ in range(BURSTS if n == burst else 1)
        ]
        for m in runs:
            check_complete(m.result)
        m = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
        if len(runs) > 1:
            say(
                f"  {label}, {len(runs)} bursts: "
                + ", ".join(f"{n / r.seconds:,.0f}/s" for r in runs)
            )
        out[name] = m
        ctx.data.setdefault("cpu_runs", []).append((f"{label}, {name}", n, m))
        out[f"rss_{name}"] = rss_mib(pid)
        say(
            f"  {label}, {name} of {n:,}: {n / m.seconds:,.0f} tasks/s ({m.seconds:.1f} s); "
            f"registry RSS {out[f'rss_{name}']:.0f} MiB after; {m.cpu_line(n)}"
        )
        time.sleep(1)  # the registry's last writes of the burst do not land in the next run
    return out


def run(ctx: Context) -> None:
    big_map, big_puts, burst, batch = (
        ctx.args.sustained_tasks,
        ctx.args.sustained_puts,
        ctx.args.burst,
        ctx.args.batch,
    )
    shapes: list[tuple[str, str, int, Callable[[Any, int], list[Any]]]] = [
        ("map", f"map() in batches of {batch}", big_map, lambda q, n: run_map(q, n, batch)),
        ("put", ".put() loop", big_puts, run_puts),
    ]
    wanted = ctx.args.sustained_shapes.split(",")
    shapes = [s for s in shapes if s[0] in wanted]
    say(
        f"\n== 9. sustained: {' and '.join(f'{big:,} tasks by {label}' for _, label, big, _ in shapes)}"
        f", each vs a {burst:,}-task burst of the same shape, measured just before it =="
    )
    results = {}
    for key, label, big, runner in shapes:
        results[label] = r = shape(ctx, key, label, big, burst, runner)
        short: Measured = r["burst"]
        long: Measured = r["sustained"]
        ctx.add(
            Row(
                benchmark="9. sustained",
                metric=f"{big} tasks, {label} + wait",
                unit="tasks/s",
                value=big / long.seconds,
                baseline_name=f"{burst}-task burst, same shape",
                baseline=burst / short.seconds,
                better="higher",
                target=f">= {TARGET}x",
                met=big / long.seconds >= TARGET * burst / short.seconds,
            )
        )
        ctx.add(
            Row(
                benchmark="9. sustained",
                metric=f"registry RSS after {big} tasks, {label}",
                unit="MiB",
                value=r["rss_sustained"],
                baseline_name=f"after the {burst}-task burst",
                baseline=r["rss_burst"],
                better="lower",
            )
        )
    ctx.data["sustained"] = results
