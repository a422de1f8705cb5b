"""2. Latency: one task put -> result round trip, p50/p99, raybeam vs a raw Ray task."""

from __future__ import annotations

import time

import ray

from benchmarks.common import Context, Row, fresh_registry, ms, percentile, quiet, say
from benchmarks.throughput import make_queue, raw_noop


def run(ctx: Context) -> None:
    runs = ctx.args.latency_runs
    say(f"\n== 2. latency: put -> result round trip, {runs} runs each ==")
    fresh_registry(ctx)
    queue = make_queue("bench_latency", runs)
    queue.register()
    raybeam_s: list[float] = []
    raw_s: list[float] = []
    with quiet():
        for i in range(10):  # warm-up
            queue.put(i).result(timeout=60)
            ray.get(raw_noop.remote(i))
        # interleaved, so both see the same background load
        for i in range(runs):
            start = time.perf_counter()
            queue.put(i).result(timeout=60)
            raybeam_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            ray.get(raw_noop.remote(i))
            raw_s.append(time.perf_counter() - start)
    rb, raw = ms(raybeam_s), ms(raw_s)
    ctx.data["latency"] = {"raybeam": rb, "raw Ray": raw}
    for p in (50, 99):
        ctx.add(
            Row(
                benchmark="2. latency",
                metric=f"put -> result, p{p}",
                unit="ms",
                value=percentile(rb, p),
                baseline_name="raw Ray task round trip",
                baseline=percentile(raw, p),
                better="lower",
            )
        )
