"""Storage on S3 (moto's server on loopback) against local disk: throughput and stored puts.

Each side runs in a child process with a Ray of its own (the registry reads the S3 endpoint
from the environment its Ray started with): 2,000 no-op tasks by `map()` to COMPLETE (the
best of two rounds), then stored puts one at a time (p50), then a check that every task of
the run is COMPLETE. moto answers in-process Python, slower than S3 in a region for small
requests and with none of its latency: the ratio says what the registry's S3 path costs
here, not what S3 costs.

    python -m benchmarks s3            # or --only s3
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row, say

CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from benchmarks.common import start_ray, median, quiet
from benchmarks.scale import probe
import raybeam
from raybeam import task_queue, connection

start_ray(Path(sys.argv[2]))
import os
os.environ["RAYBEAM_STORAGE"] = sys.argv[3]

@task_queue(name="bench_s3", cpu=1, retries=0, max_pending_tasks=20_000)
def noop(x: int) -> int:
    return x

tasks_n, samples = int(sys.argv[4]), int(sys.argv[5])
with quiet():
    raybeam.wait(noop.map(list(range(50))), timeout=300)  # warm-up
    rates, everything = [], []
    for _ in range(2):
        start = time.perf_counter()
        tasks = noop.map(list(range(tasks_n)))
        raybeam.wait(tasks, timeout=1200)
        rates.append(tasks_n / (time.perf_counter() - start))
        everything += tasks
    puts = probe(noop, samples)["put_ms"]
statuses = connection.call("statuses", [t.id for t in everything])
print(json.dumps({
    "rate": max(rates), "put_p50": median(puts),
    "complete": sum(s == "COMPLETE" for s in statuses.values()), "tasks": len(everything),
}))
"""


def side(ctx: Context, storage: str, env: dict[str, str]) -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[1]
    temp = tempfile.mkdtemp(prefix="rbb-s3-", dir="/tmp")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(repo), temp, storage, str(ctx.args.tasks),
         str(ctx.args.s3_samples)],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RAYBEAM_")}, **env},
        capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"the {storage} side failed:\n{out.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def run(ctx: Context) -> None:
    from tests.support.moto_server import AWS_ENV, create_bucket, moto_s3

    say(f"\n== S3 (moto) against local disk: {ctx.args.tasks} tasks by map(), stored puts ==")
    local = side(ctx, str(ctx.root / "storage-local"), {})
    with moto_s3(set_env=False) as endpoint:
        bucket = "bench-" + uuid.uuid4().hex[:8]
        create_bucket(endpoint, bucket)
        s3 = side(ctx, f"s3://{bucket}/raybeam", {**AWS_ENV, "AWS_ENDPOINT_URL_S3": endpoint})
    for name, figures in (("local", local), ("S3", s3)):
        say(
            f"  {name}: {figures['rate']:.0f} tasks/s, stored put p50 {figures['put_p50']:.2f} ms,"
            f" {figures['complete']} of {figures['tasks']} tasks COMPLETE"
        )
        if figures["complete"] != figures["tasks"]:
            ctx.note(f"s3: {name}: only {figures['complete']} of {figures['tasks']} COMPLETE")
    common = {"benchmark": "S3 (moto)", "baseline_name": "local disk"}
    ctx.add(
        Row(**common, metric=f"{ctx.args.tasks} tasks by map()", unit="tasks/s",
            value=s3["rate"], baseline=local["rate"], better="higher")
    )  # fmt: skip
    ctx.add(
        Row(**common, metric="stored put p50", unit="ms", value=s3["put_p50"],
            baseline=local["put_p50"], better="lower")
    )  # fmt: skip
