"""The cost of `context.progress()` in a tight loop, against a plain dict write in the same
loop (the baseline): calls are coalesced in the worker, so the registry sees at most a few
stores a second per task, whatever the loop does. No Ray needed:
`python -m benchmarks.progress`."""

from __future__ import annotations

import time

from raybeam import runner
from raybeam.context import TaskContext

CALLS = 200_000


def per_call(fn: object, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i / calls)  # type: ignore[operator]
    return (time.perf_counter() - start) / calls


def main() -> None:
    reporter = runner._ProgressReporter()
    reporter.thread = object()  # type: ignore[assignment]  # measure the call, send nothing
    ctx = TaskContext(
        task_id="t", queue="q", attempt=1,
        report_progress=lambda value: reporter.report("t", "r", value),
    )  # fmt: skip
    latest: dict[str, float] = {}

    def baseline(value: float) -> None:
        latest["t"] = value

    base = per_call(baseline, CALLS)
    number = per_call(ctx.progress, CALLS)
    obj = per_call(lambda v: ctx.progress({"done": v, "of": 1}), CALLS // 10)
    print(f"baseline (a dict write): {base * 1e6:.2f} us per call")
    print(f"context.progress(0.5): {number * 1e6:.2f} us per call ({number / base:.0f}x)")
    print(f"context.progress({{...}}): {obj * 1e6:.2f} us per call ({obj / base:.0f}x)")
    print(f"stores per second per task, at most: {1 / runner.PROGRESS_EVERY:.0f}")


if __name__ == "__main__":
    main()
