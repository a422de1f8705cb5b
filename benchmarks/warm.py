"""7. Warm vs plain (issue 7): a model loaded once per container vs once per task."""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import Context, Row, fresh_registry, quiet, say
from raybeam import TaskContext, task_queue

#: seconds the stand-in "model" takes to load
LOAD_SECONDS = 0.5


def load_model() -> dict[str, float]:
    time.sleep(LOAD_SECONDS)
    return {"weight": 2.0}


def predict_plain(x: int) -> float:
    model = load_model()  # what a plain queue has to do on every task
    return model["weight"] * x


def predict_warm(x: int, context: TaskContext | None = None) -> float:
    if context is None:
        raise RuntimeError("a warm queue's task needs its context")
    model: dict[str, float] = context.on_start_value
    return model["weight"] * x


def sequential(queue: Any, n: int) -> list[float]:
    """Round-trip seconds of `n` tasks run one after another."""
    out = []
    with quiet():
        for i in range(n):
            start = time.perf_counter()
            queue.put(i).result(timeout=120)
            out.append(time.perf_counter() - start)
    return out


def run(ctx: Context) -> None:
    n = ctx.args.warm_tasks
    say(f"\n== 7. warm vs plain: {n} tasks each, one at a time, {LOAD_SECONDS} s model load ==")
    fresh_registry(ctx)
    plain = task_queue(predict_plain, name="bench_plain", max_pending_tasks=4 * n)
    warm = task_queue(
        predict_warm,
        name="bench_warm",
        on_start=load_model,
        keep_warm_seconds=60,
        max_pending_tasks=4 * n,
    )
    plain.register()
    warm.register()
    plain_s = sequential(plain, n)
    warm_s = sequential(warm, n)  # the first one starts the container and loads the model
    plain_total, warm_total = sum(plain_s), sum(warm_s)
    say(
        f"  plain: {plain_total:.2f} s in all, {1000 * plain_total / n:.0f} ms/task; warm: "
        f"{warm_total:.2f} s in all (first task {1000 * warm_s[0]:.0f} ms, with the container "
        f"start and the load), {1000 * sum(warm_s[1:]) / max(1, n - 1):.0f} ms/task after it"
    )
    ctx.data["warm"] = {"plain_s": plain_s, "warm_s": warm_s}
    common = {"benchmark": "7. warm workers", "baseline_name": "plain queue, load per task"}
    ctx.add(
        Row(
            **common,
            metric=f"{n} tasks one by one, total (warm incl. its cold start)",
            unit="s",
            value=warm_total,
            baseline=plain_total,
            better="lower",
        )
    )
    ctx.add(
        Row(
            **common,
            metric="per-task round trip once warm (tasks 2..N)",
            unit="ms",
            value=1000 * sum(warm_s[1:]) / max(1, n - 1),
            baseline=1000 * sum(plain_s[1:]) / max(1, n - 1),
            better="lower",
        )
    )
    # the container holds a CPU for keep_warm_seconds: stop it before the next benchmark
    fresh_registry(ctx)
