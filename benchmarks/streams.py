"""8. Streams: time to answer other routes with 200 event streams open vs none, same run.

SPEC §10: with 200 streams (SSE) open, other routes still answer within a second. Each
stream follows a task that never starts, so it stays open (a keep-alive every 15 s); the
timed requests are `GET /v2/task/?limit=1` and `GET /healthz`, one at a time, first with no
stream open, then with all of them open.

Standalone: `python -m benchmarks.streams [--streams 200] [--samples 100]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.common import Context, Row, fresh_registry, percentile, say
from benchmarks.http_api import start_serve
from raybeam import task_queue

TOKEN = "bench-token"
PATHS = ("/v2/task/?limit=1", "/healthz")


def never(x: int = 0) -> int:
    return x


def timings(base: str, samples: int) -> list[float]:
    """Seconds per request, `samples` rounds over PATHS, one request at a time."""
    seen: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for _ in range(samples):
            for path in PATHS:
                start = time.perf_counter()
                answer = client.get(path)
                seen.append(time.perf_counter() - start)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text}")
    return seen


class OpenStreams:
    """`count` event streams on one task, held open by an event loop in a thread."""

    def __init__(self, base: str, task_id: str, count: int) -> None:
        self.opened = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(base, task_id, count), daemon=True)
        self.thread.start()

    def _run(self, base: str, task_id: str, count: int) -> None:
        asyncio.run(self._hold_all(base, task_id, count))

    async def _hold_all(self, base: str, task_id: str, count: int) -> None:
        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=120, limits=limits
        ) as client:

            async def hold() -> None:
                async with client.stream("GET", f"/v2/task/{task_id}/subscribe") as answer:
                    lines = answer.aiter_lines()  # kept: dropping it would close the stream
                    async for line in lines:
                        if line.startswith("event: status"):
                            self.opened += 1
                            break
                    while not self.done.is_set():
                        await asyncio.sleep(0.1)
                    await lines.aclose()

            await asyncio.gather(*(hold() for _ in range(count)), return_exceptions=True)

    def wait_open(self, count: int, within: float = 120) -> None:
        deadline = time.monotonic() + within
        while self.opened < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.opened} of {count} streams opened")
            time.sleep(0.1)

    def close(self) -> None:
        self.done.set()
        self.thread.join(60)


def run(ctx: Context) -> None:
    from ray import serve

    from serve_app.deployment import APP_NAME, deploy

    count = int(getattr(ctx.args, "streams", 200))
    samples = int(getattr(ctx.args, "stream_samples", 100))
    say(f"\n== 8. Streams: other routes with {count} event streams open vs none ==")
    fresh_registry(ctx)
    os.environ["RAYBEAM_AUTH_TOKENS"] = TOKEN
    base = start_serve(ctx)
    queue = task_queue(never, name="bench_streams", cpu=1024, max_pending_tasks=10)
    queue.register()
    deploy("127.0.0.1", int(base.rsplit(":", 1)[1]))
    streams: OpenStreams | None = None
    try:
        timings(base, 10)  # warm-up: replica, routes, connections
        idle = timings(base, samples)
        task = queue.put()
        streams = OpenStreams(base, task.id, count)
        streams.wait_open(count)
        busy = timings(base, samples)
        still = streams.opened
        task.cancel()
    finally:
        if streams is not None:
            streams.close()
        serve.delete(APP_NAME)
        os.environ.pop("RAYBEAM_AUTH_TOKENS", None)
    idle_ms = [s * 1000 for s in idle]
    busy_ms = [s * 1000 for s in busy]
    ctx.data["streams"] = {"idle_ms": idle_ms, "busy_ms": busy_ms, "streams": count}
    say(
        f"  {len(busy)} requests with {still} streams open: p50 {percentile(busy_ms, 50):.1f} "
        f"ms, p99 {percentile(busy_ms, 99):.1f} ms, max {max(busy_ms):.1f} ms; with none: "
        f"p50 {percentile(idle_ms, 50):.1f} ms, p99 {percentile(idle_ms, 99):.1f} ms, "
        f"max {max(idle_ms):.1f} ms"
    )
    common = {"benchmark": "8. streams", "baseline_name": "no stream open", "unit": "ms"}
    for p in (50, 99):
        ctx.add(
            Row(
                **common,
                metric=f"time to answer, p{p}, {count} streams open",
                value=percentile(busy_ms, p),
                baseline=percentile(idle_ms, p),
                better="lower",
            )
        )
    ctx.add(
        Row(
            **common,
            metric=f"time to answer, slowest, {count} streams open",
            value=max(busy_ms),
            baseline=max(idle_ms),
            better="lower",
            target="< 1000 ms",
            met=max(busy_ms) < 1000,
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streams", description=__doc__)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--stream-samples", type=int, default=100, help="rounds of timed requests")
    args = p.parse_args(argv)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for name in ("RAY_ADDRESS", "RAYBEAM_AUTH_TOKENS"):
        os.environ.pop(name, None)

    import ray

    from benchmarks.common import start_ray

    root = Path(tempfile.mkdtemp(prefix="rbb-", dir="/tmp"))
    ctx = Context(args=args, root=root, out=root)
    try:
        start_ray(root)
        run(ctx)
    finally:
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
