"""`python -m benchmarks`: every benchmark on a private local Ray; results in benchmarks/results."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ORDER = [
    "throughput", "latency", "warm", "http", "streams", "recovery", "scale", "peers", "profile",
]  # fmt: skip
#: longer runs, only when named (`python -m benchmarks fractional` or `--only sustained`)
EXTRA = ["fractional", "sustained", "archive", "s3"]
#: benchmark name -> module, where they differ
MODULES = {"http": "http_api", "archive": "archive_scale"}


def numbers(kind: Callable[[str], float]) -> Callable[[str], list[Any]]:
    """An argument type: comma-separated numbers of `kind` (int or float)."""
    return lambda text: [kind(x) for x in text.split(",")]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="raybeam against raw Ray, bare Ray Serve, Celery and RQ, side by side.",
    )
    p.add_argument(
        "names", nargs="*", help=f"benchmarks to run (as --only), also {', '.join(EXTRA)}"
    )
    p.add_argument("--only", help=f"comma-separated subset of {','.join(ORDER + EXTRA)}")
    p.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--tasks", type=int, default=2000, help="tasks for throughput and peers")
    p.add_argument("--repeats", type=int, default=2, help="rounds of each throughput run")
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--warm-tasks", type=int, default=20)
    p.add_argument("--recovery-tasks", type=int, default=1000)
    p.add_argument(
        "--http-requests",
        type=numbers(int),
        default=[300, 1500],
        help="requests per endpoint with 1 and with 16 clients",
    )
    p.add_argument("--http-seconds", type=float, default=15, help="time bound per HTTP load")
    p.add_argument(
        "--scale-levels",
        type=numbers(int),
        default=[1000, 10000, 100000],
        help="records held at each scale step",
    )
    p.add_argument("--scale-samples", type=int, default=300, help="puts timed per scale step")
    p.add_argument(
        "--fractional-tasks", type=int, default=10000, help="tasks per case of fractional"
    )
    p.add_argument(
        "--fractional-cpus",
        type=numbers(float),
        default=[0.1, 0.25, 1.0],
        help="the cpu= of each fractional case",
    )
    p.add_argument("--batch", type=int, default=2000, help="map() batch of fractional, sustained")
    p.add_argument("--sustained-tasks", type=int, default=100000, help="sustained: map() tasks")
    p.add_argument("--sustained-puts", type=int, default=100000, help="sustained: .put() tasks")
    p.add_argument("--sustained-shapes", default="map,put", help="sustained: map, put or map,put")
    p.add_argument("--burst", type=int, default=2000, help="sustained: the burst it is held to")
    p.add_argument("--archive-records", type=int, default=1_000_000, help="archive: archived")
    p.add_argument("--archive-live", type=int, default=10_000, help="archive: live records")
    p.add_argument("--archive-samples", type=int, default=200, help="archive: reads timed")
    p.add_argument("--s3-samples", type=int, default=200, help="s3: stored puts timed")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--keep-temp", action="store_true", help="keep Ray's logs and the storage")
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.repeats, args.latency_runs = 200, 1, 30
        args.warm_tasks, args.recovery_tasks = 4, 200
        args.http_requests, args.http_seconds = [50, 200], 10
        args.scale_levels, args.scale_samples = [200, 1000, 2000], 20
        args.fractional_tasks, args.batch = 2000, 500
        args.sustained_tasks, args.sustained_puts, args.burst = 5000, 5000, 500
        args.archive_records, args.archive_live, args.archive_samples = 50_000, 1000, 30
        args.s3_samples = 30
    named = args.names + (args.only.split(",") if args.only else [])
    chosen = named or list(ORDER)
    skipped = set(filter(None, args.skip.split(",")))
    unknown = (set(chosen) | skipped) - set(ORDER + EXTRA)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {','.join(ORDER + EXTRA)}")
    args.benchmarks = [b for b in ORDER + EXTRA if b in chosen and b not in skipped]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    # a private local Ray on loopback, whatever the caller's environment says
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for name in ("RAY_ADDRESS", "RAYBEAM_AUTH_TOKENS"):
        os.environ.pop(name, None)

    import importlib

    import ray

    from benchmarks import report
    from benchmarks.common import Context, machine_facts, say, start_ray

    root = Path(tempfile.mkdtemp(prefix="rbb-", dir="/tmp"))
    ctx = Context(args=args, root=root, out=args.out)
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.facts = machine_facts()
    say("raybeam benchmarks\n")
    for k, v in ctx.facts.items():
        say(f"  {k}: {v}")
    say(f"  benchmarks: {', '.join(args.benchmarks)}; temp folder {root}")
    began = time.perf_counter()
    try:
        start_ray(root)
        ctx.facts["Ray cluster"] = "private local Ray, num_cpus=2, loopback, no dashboard"
        for name in args.benchmarks:
            section = time.perf_counter()
            try:
                importlib.import_module(f"benchmarks.{MODULES.get(name, name)}").run(ctx)
            except Exception as exc:  # one broken benchmark must not lose the others' figures
                import traceback

                traceback.print_exc()
                ctx.note(f"{name}: failed: {type(exc).__name__}: {exc}")
            ctx.timings[name] = time.perf_counter() - section
    finally:
        try:
            from ray import serve

            if ray.is_initialized() and "serve_url" in ctx.data:
                serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            if not args.keep_temp:
                shutil.rmtree(root, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    ctx.facts["load average at end (1, 5, 15 min)"] = load
    sections = ", ".join(f"{k} {v:.0f} s" for k, v in ctx.timings.items())
    ctx.facts["wall time"] = f"{time.perf_counter() - began:.0f} s ({sections})"
    command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    report.write(ctx, command)
    failed = [n for n in ctx.notes if ": failed:" in n]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
