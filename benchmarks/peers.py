"""5. Peers: the same N no-op tasks through Celery, RQ and Ray Serve's asynchronous inference.

Each uses a real `redis-server` that this benchmark starts on a free loopback port (broker and
result backend), and 2 worker processes, as raybeam has 2 CPUs. The time is from the first
enqueue to the last result; raybeam's `map()` + `wait` is measured again just before them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Row, free_port, fresh_registry, missing_modules, say
from benchmarks.throughput import check_complete, make_queue, run_map

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2


@contextlib.contextmanager
def redis_server(ctx: Context) -> Iterator[str]:
    import redis

    port = free_port()
    folder = ctx.root / "redis"
    folder.mkdir(exist_ok=True)
    cmd = [
        "redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", str(folder), "--loglevel", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not answer on port {port}")
        client.close()
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def processes(cmds: list[list[str]], env: dict[str, str], log: Path) -> Iterator[None]:
    with open(log, "ab") as out:
        procs = [
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
            for cmd in cmds
        ]
    try:
        yield
    finally:
        for proc in procs:
            stop(proc)


def worker_env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["BENCH_REDIS_URL"] = url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


#: stop repeating a peer's rounds once they have taken this long (RQ forks per job: slow)
ROUNDS_BUDGET_S = 20.0


def best(repeats: int, once: Callable[[], None]) -> list[float]:
    """Seconds of up to `repeats` rounds; fewer when they pass ROUNDS_BUDGET_S together."""
    times: list[float] = []
    while len(times) < repeats and sum(times) < ROUNDS_BUDGET_S:
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return times


# ---- Celery -------------------------------------------------------------------------------


def celery(ctx: Context, url: str, n: int) -> list[float]:
    from celery.result import ResultSet

    env = worker_env(url)
    env["BENCH_CELERY_WORKER"] = "1"
    os.environ["BENCH_REDIS_URL"] = url
    from benchmarks.peer_tasks import celery_app

    app = celery_app()
    noop = app.tasks["bench.noop"]
    cmd = [
        sys.executable, "-m", "celery", "-A", "benchmarks.peer_tasks:app", "worker",
        f"--concurrency={WORKERS}", "--pool=prefork", "--loglevel=WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", "bench@%h",
    ]  # fmt: skip
    with processes([cmd], env, ctx.root / "celery.log"):
        noop.delay(0).get(timeout=120)  # the worker is up

        def once() -> None:
            results = [noop.delay(i) for i in range(n)]
            ResultSet(results).get(timeout=600)

        ResultSet([noop.delay(i) for i in range(50)]).get(timeout=120)  # warm-up
        return best(ctx.args.repeats, once)


# ---- RQ ----------------------------------------------------------------------------------


def rq(ctx: Context, url: str, n: int) -> list[float]:
    from redis import Redis
    from rq import Queue

    from benchmarks.peer_tasks import noop

    rq_bin = Path(sys.executable).parent / "rq"
    connection = Redis.from_url(url)
    queue = Queue("bench_rq", connection=connection)
    cmd = [str(rq_bin), "worker", "--url", url, "--path", str(REPO), "--quiet", "bench_rq"]
    with processes([cmd] * WORKERS, worker_env(url), ctx.root / "rq.log"):

        def run(count: int) -> None:
            done = queue.finished_job_registry
            failed = queue.failed_job_registry
            before = done.count + failed.count
            queue.enqueue_many([Queue.prepare_data(noop, args=(i,)) for i in range(count)])
            deadline = time.monotonic() + 600
            while done.count + failed.count - before < count:
                if time.monotonic() > deadline:
                    raise TimeoutError("RQ did not finish its jobs in 600 s")
                time.sleep(0.01)
            if failed.count:
                raise RuntimeError(f"{failed.count} RQ jobs failed; see {ctx.root / 'rq.log'}")

        run(50)  # the workers are up
        return best(ctx.args.repeats, lambda: run(n))


# ---- Ray Serve asynchronous inference -----------------------------------------------------


def serve_async(ctx: Context, url: str, n: int) -> list[float]:
    from celery.result import ResultSet
    from ray import serve
    from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
    from ray.serve.task_consumer import (
        instantiate_adapter_from_config,
        task_consumer,
        task_handler,
    )

    from benchmarks.http_api import start_serve

    config = TaskProcessorConfig(
        queue_name="bench_serve_async",
        adapter_config=CeleryAdapterConfig(broker_url=url, backend_url=url),
    )

    @serve.deployment(num_replicas=WORKERS, ray_actor_options={"num_cpus": 1})
    @task_consumer(task_processor_config=config)
    class Consumer:
        @task_handler(name="noop")
        def noop(self, x: int) -> int:
            return x

    start_serve(ctx)
    serve.run(Consumer.bind(), name="bench_async", route_prefix=None)  # type: ignore[attr-defined]
    try:
        adapter = instantiate_adapter_from_config(config)
        app = adapter._app  # the adapter's Celery app, for waiting on many results at once

        def run(count: int) -> None:
            ids = [adapter.enqueue_task_sync("noop", args=[i]).id for i in range(count)]
            ResultSet([app.AsyncResult(i) for i in ids]).get(timeout=600)

        run(50)  # the consumers are up
        return best(ctx.args.repeats, lambda: run(n))
    finally:
        serve.delete("bench_async")


def run(ctx: Context) -> None:
    n = ctx.args.tasks
    say(f"\n== 5. peers: {n} no-op tasks through Celery, RQ, Ray Serve async inference ==")
    if shutil.which("redis-server") is None:
        ctx.note("peers: skipped, no redis-server on PATH (run benchmarks/setup)")
        return
    absent = missing_modules("redis", "celery", "rq")
    if absent:
        ctx.note(f"peers: skipped, {', '.join(absent)} not installed (run benchmarks/setup)")
        return
    peers: dict[str, Callable[[Context, str, int], list[float]]] = {
        "Celery (Redis)": celery,
        "RQ (Redis)": rq,
        "Ray Serve async inference (Celery adapter)": serve_async,
    }
    # raybeam again, here, so that it and the peers see the same background load
    fresh_registry(ctx)
    queue = make_queue("bench_peers", n)
    queue.register()
    check_complete(run_map(queue, 50))
    times = best(ctx.args.repeats, lambda: check_complete(run_map(queue, n)))
    say("  raybeam map(): " + ", ".join(f"{n / s:,.0f}/s ({s:.2f} s)" for s in times))
    raybeam_rate = n / min(times)
    rates: dict[str, float] = {}
    with redis_server(ctx) as url:
        for name, bench in peers.items():
            try:
                times = bench(ctx, url, n)
            except Exception as exc:
                ctx.note(f"peers: {name} failed: {type(exc).__name__}: {exc}")
                continue
            say(f"  {name}: " + ", ".join(f"{n / s:,.0f}/s ({s:.2f} s)" for s in times))
            rates[name] = n / min(times)
    ctx.data["peers"] = {"raybeam map()": raybeam_rate, **rates}
    for name, rate in rates.items():
        ctx.add(
            Row(
                benchmark="5. peers",
                metric=f"{n} tasks, raybeam map() + wait",
                unit="tasks/s",
                value=raybeam_rate,
                baseline_name=name,
                baseline=rate,
                better="higher",
                target="> 1x",
                met=raybeam_rate > rate,
            )
        )
