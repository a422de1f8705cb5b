"""6. Recovery: registry killed right after N tasks are enqueued -> all of them COMPLETE.

Ray does not restart the registry (see raybeam/registry.py): raybeam's next API call starts
it again, it reloads its journal and resubmits every task that was not final. The baseline is
the same N tasks from the same point (map returned) with no kill.
"""

from __future__ import annotations

import time
from collections import Counter

import raybeam
from benchmarks.common import Context, Row, fresh_registry, quiet, say
from benchmarks.throughput import check_complete, make_queue
from raybeam import connection
from tests.support.registry import kill_registry


def run(ctx: Context) -> None:
    n = ctx.args.recovery_tasks
    say(f"\n== 6. recovery: registry killed with {n} tasks enqueued -> all COMPLETE ==")
    fresh_registry(ctx)
    queue = make_queue("bench_recovery", n)
    queue.register()
    with quiet():
        raybeam.wait(queue.map(list(range(20))))  # warm-up

        tasks = queue.map(list(range(n)))
        start = time.perf_counter()
        raybeam.wait(tasks)
        baseline = time.perf_counter() - start
        check_complete(tasks)

        tasks = queue.map(list(range(n)))
        statuses = connection.call("statuses", [t.id for t in tasks])
        unfinished = sum(1 for s in statuses.values() if s != "COMPLETE")
        start = time.perf_counter()
        kill_registry()
        connection.call("ping")  # what any raybeam call does: start the registry again
        back = time.perf_counter() - start
        raybeam.wait(tasks, timeout=600)
        recovered = time.perf_counter() - start
    statuses = connection.call("statuses", [t.id for t in tasks])
    ended = Counter(statuses.values())
    reasons = Counter(
        connection.call("get", task_id)["failure_reason"]
        for task_id, status in statuses.items()
        if status != "COMPLETE"
    )
    say(
        f"  {unfinished} of {n} tasks were not COMPLETE at the kill; registry back in "
        f"{back:.2f} s; all final {recovered:.2f} s after the kill (no kill: {baseline:.2f} s);"
        f" final statuses {dict(ended)}"
    )
    lost = n - ended.get("COMPLETE", 0)
    if lost:
        ctx.note(
            f"recovery: {lost} of {n} tasks did not end COMPLETE after the registry restart "
            f"({dict(ended)}; failure reasons {dict(reasons)})"
        )
    ctx.data["recovery"] = {
        "n": n,
        "unfinished_at_kill": unfinished,
        "registry_back_s": back,
        "recovered_s": recovered,
        "baseline_s": baseline,
        "final_statuses": dict(ended),
    }
    ctx.add(
        Row(
            benchmark="6. recovery",
            metric=f"{n} tasks: enqueued -> all final, registry killed at once",
            unit="s",
            value=recovered,
            baseline_name="same tasks, no kill",
            baseline=baseline,
            better="lower",
        )
    )
