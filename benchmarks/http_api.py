"""3. HTTP: `POST /taskqueue/{name}` vs a bare Ray Serve FastAPI endpoint on the same Serve."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import httpx
from fastapi import FastAPI, Request
from ray import serve
from ray.serve.schema import LoggingConfig

from benchmarks.common import Context, Row, free_port, fresh_registry, ms, percentile, say
from benchmarks.throughput import noop
from raybeam import task_queue

TOKEN = "bench-token"
BARE_APP = "bench_bare"

bare_api = FastAPI()


@bare_api.post("/taskqueue/{name}")
async def bare_enqueue(name: str, request: Request) -> dict[str, str]:
    await request.body()
    return {"task_id": "0"}


#: access logs off, as raybeam's deployment has them
QUIET = LoggingConfig(enable_access_log=False)


# the same concurrency limit as raybeam's deployment (serve_app/deployment.py)
@serve.deployment(
    name="bench_bare",
    ray_actor_options={"num_cpus": 0},
    logging_config=QUIET,
    max_ongoing_requests=64,
)
@serve.ingress(bare_api)
class Bare:
    pass


def start_serve(ctx: Context) -> str:
    """Serve on a free loopback port (once per run); returns its base URL."""
    if "serve_url" not in ctx.data:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET)
        ctx.data["serve_url"] = f"http://127.0.0.1:{port}"
    url: str = ctx.data["serve_url"]
    return url


async def load(url: str, clients: int, max_requests: int, max_seconds: float) -> dict[str, Any]:
    """`clients` concurrent loops POSTing to `url`, bounded in count and time."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors = 0
    sent = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
        deadline = time.perf_counter() + max_seconds

        async def worker() -> None:
            nonlocal sent, errors
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                start = time.perf_counter()
                try:
                    resp = await client.post(url, json={"kwargs": {"x": sent}})
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)
                codes[resp.status_code] = codes.get(resp.status_code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ok = codes.get(200, 0)
    return {
        "latencies_ms": ms(latencies),
        "codes": codes,
        "errors": errors,
        "elapsed": elapsed,
        "rps": ok / elapsed if elapsed else 0.0,
    }


#: rounds in which the two endpoints take turns
ROUNDS = 4


def merge(total: dict[str, Any] | None, res: dict[str, Any]) -> dict[str, Any]:
    """Two loads' figures as one load's."""
    if total is None:
        return res
    codes = dict(total["codes"])
    for code, n in res["codes"].items():
        codes[code] = codes.get(code, 0) + n
    elapsed = total["elapsed"] + res["elapsed"]
    return {
        "latencies_ms": total["latencies_ms"] + res["latencies_ms"],
        "codes": codes,
        "errors": total["errors"] + res["errors"],
        "elapsed": elapsed,
        "rps": codes.get(200, 0) / elapsed if elapsed else 0.0,
    }


def run(ctx: Context) -> None:
    from serve_app.deployment import APP_NAME, deploy

    say("\n== 3. HTTP: POST /taskqueue/{name} vs a bare Ray Serve FastAPI endpoint ==")
    fresh_registry(ctx)
    os.environ["RAYBEAM_AUTH_TOKENS"] = TOKEN
    base = start_serve(ctx)
    port = int(base.rsplit(":", 1)[1])
    total = sum(ctx.args.http_requests)
    queue = task_queue(noop, name="bench_http", max_pending_tasks=total + 1000)
    queue.register()
    deploy("127.0.0.1", port)
    serve.run(Bare.bind(), name=BARE_APP, route_prefix="/bare")  # type: ignore[attr-defined]
    urls = {
        "raybeam": f"{base}/taskqueue/bench_http",
        "bare Serve": f"{base}/bare/taskqueue/bench_http",
    }
    results: dict[str, dict[int, dict[str, Any]]] = {"raybeam": {}, "bare Serve": {}}
    try:
        for name, url in urls.items():  # warm-up: replicas, routes, connections
            warm = asyncio.run(load(url, 4, 40, 30))
            if warm["codes"].get(200, 0) == 0:
                raise RuntimeError(f"{name} answered no 200 during warm-up: {warm['codes']}")
        for clients, requests in zip((1, 16), ctx.args.http_requests, strict=True):
            # the two endpoints take turns, in ROUNDS rounds, so that a slow spell of the
            # (shared) machine does not fall on one of them only
            for turn in range(ROUNDS):
                order = list(urls.items()) if turn % 2 == 0 else list(urls.items())[::-1]
                for name, url in order:
                    seconds = ctx.args.http_seconds / ROUNDS
                    res = asyncio.run(load(url, clients, requests // ROUNDS, seconds))
                    results[name][clients] = merge(results[name].get(clients), res)
            for name in urls:
                res = results[name][clients]
                lat = res["latencies_ms"]
                say(
                    f"  {name}, {clients} client(s): {len(lat)} requests in {res['elapsed']:.1f}"
                    f" s, {res['rps']:.0f} req/s, p50 {percentile(lat, 50):.1f} ms, p99 "
                    f"{percentile(lat, 99):.1f} ms, codes {res['codes']}, errors {res['errors']}"
                )
    finally:
        serve.delete(BARE_APP)
        serve.delete(APP_NAME)
        os.environ.pop("RAYBEAM_AUTH_TOKENS", None)
    ctx.data["http"] = results
    for clients in (1, 16):
        rb, bare = results["raybeam"][clients], results["bare Serve"][clients]
        p50_rb = percentile(rb["latencies_ms"], 50)
        p50_bare = percentile(bare["latencies_ms"], 50)
        common = {"benchmark": "3. HTTP", "baseline_name": "bare Serve FastAPI endpoint"}
        ctx.add(
            Row(
                **common,
                metric=f"enqueue p50, {clients} client(s)",
                unit="ms",
                value=p50_rb,
                baseline=p50_bare,
                better="lower",
                target="<= 1.5x",
                met=p50_rb <= 1.5 * p50_bare,
            )
        )
        ctx.add(
            Row(
                **common,
                metric=f"enqueue p99, {clients} client(s)",
                unit="ms",
                value=percentile(rb["latencies_ms"], 99),
                baseline=percentile(bare["latencies_ms"], 99),
                better="lower",
            )
        )
        ctx.add(
            Row(
                **common,
                metric=f"enqueue throughput, {clients} client(s)",
                unit="req/s",
                value=rb["rps"],
                baseline=bare["rps"],
                better="higher",
            )
        )
