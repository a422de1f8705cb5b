"""What the dashboard costs with 100k tasks held: the real registry reads (`Reads` over a
`RegistryCore` holding 100k records, no Ray) behind the real app. A poll of the queues page
is one page of tasks and the queue counts; it never reads the whole task table out.

Run with `-s` to see the figures."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from raybeam.core import RegistryCore
from raybeam.host import Host
from raybeam.reads import Reads
from raybeam.record import TaskRecord, TaskSpec, TaskStatus
from serve_app import dashboard, guard
from serve_app.app import create_app
from tests.support.cores import make_core
from tests.support.fake_dns import use_fake_dns

TASKS = 100_000
QUEUES = [f"queue_{i}" for i in range(5)]
TOKEN = "scale-token"
PAGE = 50


class Dispatch:
    def __init__(self, host: Host) -> None:
        self.host = host

    def containers(self, queue: str) -> int | None:
        return None


class Registry:
    """The HTTP app's registry client, answered by the real reads of a core in this process."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        if method in ("metrics", "queue_stats"):
            return getattr(self.reads, method)()
        return await getattr(self.reads, method)(*args)


def fill(core: RegistryCore) -> list[str]:
    spec = TaskSpec(function="f")
    start = time.time() - TASKS
    statuses = [TaskStatus.COMPLETE] * 90 + [TaskStatus.PENDING] * 6 + [TaskStatus.RUNNING] * 3
    ids = []
    for i in range(TASKS):
        status = TaskStatus.FAILED if i % 1000 == 7 else statuses[i % len(statuses)]
        rec = TaskRecord(id=f"t{i:06d}", queue=QUEUES[i % len(QUEUES)], spec=spec)
        rec.created_at = rec.updated_at = start + i
        rec.history = [("PENDING", start + i)]
        if status is not TaskStatus.PENDING:
            rec.attempts = 1
            rec.started_at = start + i + 0.5
            rec.history.append(("RUNNING", rec.started_at))
        if status is not TaskStatus.RUNNING and status is not TaskStatus.PENDING:
            rec.history.append((status.value, start + i + 1))
            rec.ended_at = start + i + 1
        rec.status = status
        if status is TaskStatus.FAILED:
            rec.failure_reason = "Traceback (most recent call last):\n  ...\nValueError: no"
        rec.result = {"result": i} if status is TaskStatus.COMPLETE else None
        core.tasks[rec.id] = rec
        core.counts[rec.queue] += not status.is_final
        core.running[rec.queue] += status is TaskStatus.RUNNING
        core.by_status.setdefault(rec.queue, Counter())[status.value] += 1
        ids.append(rec.id)
    return ids


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryCore, list[str]]]:
    core = make_core(tmp_path_factory.mktemp("scale"), dispatch=Dispatch)
    for name in QUEUES:
        core.queues[name] = {"name": name}
    core.queues["never_used"] = {"name": "never_used"}
    yield core, fill(core)


def timed(fn: Any, *args: Any, repeat: int = 5) -> float:
    """Median seconds of `repeat` runs of `fn(*args)` (an awaitable's result awaited)."""

    async def go() -> float:
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            answer = fn(*args)
            if asyncio.iscoroutine(answer):
                await answer
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    return asyncio.run(go())


def report(name: str, seconds: float, extra: str = "") -> None:
    print(f"  {name:<54} {seconds * 1000:8.2f} ms {extra}")


def test_registry_reads_behind_a_page(held: tuple[RegistryCore, list[str]]) -> None:
    core, ids = held
    reads = Reads(core)
    print(f"\nregistry reads with {len(core.tasks)} tasks held (median of 5):")
    figures = {
        "metrics(): the queue counts": timed(reads.metrics),
        "list: newest 50": timed(reads.list, None, None, PAGE, None),
        "list: newest 50 of one queue": timed(reads.list, QUEUES[2], None, PAGE, None),
        "list: 50 FAILED (1 in 1000)": timed(reads.list, None, "FAILED", PAGE, None),
        "list: 50 past the middle (cursor)": timed(reads.list, None, None, PAGE, ids[TASKS // 2]),
        "list: 50 past the oldest 100 (cursor)": timed(reads.list, None, None, PAGE, ids[100]),
        "get + history": timed(lambda: asyncio.gather(reads.get(ids[5]), reads.history(ids[5]))),
    }
    for name, seconds in figures.items():
        report(name, seconds)
    # generous bounds: a shared 2-core machine; the figures above are what to look at
    assert all(seconds < 2.0 for seconds in figures.values()), figures


def dashboard_app(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The app with a fresh dashboard router: its first poll reads the counts."""
    app: FastAPI = create_app(tokens=[TOKEN], registry=registry)
    if not any(getattr(r, "path", None) == "/dashboard" for r in app.routes):
        app.add_middleware(dashboard.CookieAuth)
        app.include_router(dashboard.dashboard_router())
        pages = r"^/dashboard(/task/[^/]+|/static/[A-Za-z0-9_.-]+|/login|/logout)?$"
        monkeypatch.setattr(guard, "PUBLIC", re.compile(f"(?:{guard.PUBLIC.pattern})|{pages}"))
    return app


def test_a_dashboard_poll_reads_one_page(
    held: tuple[RegistryCore, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_dns(monkeypatch)
    core, ids = held
    registry = Registry(Reads(core))
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def poll(client: httpx.AsyncClient, params: dict[str, Any]) -> list[httpx.Response]:
        # what the queues page sends each poll, as its script does: both at once
        return list(
            await asyncio.gather(
                client.get("/dashboard/api/queues"),
                client.get("/v2/task/", params={"limit": PAGE, **params}),
            )
        )

    async def measure(app: FastAPI, params: dict[str, Any]) -> tuple[list[float], int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=headers
        ) as client:
            samples, size = [], 0
            for _ in range(5):
                t0 = time.perf_counter()
                answers = await poll(client, params)
                samples.append(time.perf_counter() - t0)
                assert all(a.status_code == 200 for a in answers), answers[0].text
                size = sum(len(a.content) for a in answers)
                page = answers[1].json()
                assert len(page["tasks"]) == PAGE
                if "status" in params:
                    assert {t["status"] for t in page["tasks"]} == {params["status"]}
            return samples, size

    figures: dict[str, tuple[float, int]] = {}
    for name, params in (
        ("queues page poll (newest 50)", {}),
        ("queues page poll, FAILED filter", {"status": "FAILED"}),
        ("queues page poll, page past the middle", {"cursor": ids[TASKS // 2]}),
    ):
        samples, size = asyncio.run(measure(dashboard_app(registry, monkeypatch), params))
        figures[f"{name}, counts read"] = (samples[0], size)
        figures[f"{name}, counts shared"] = (statistics.median(samples[1:]), size)
    app = dashboard_app(registry, monkeypatch)
    task = asyncio.run(_get(app, f"/dashboard/api/task/{ids[7]}", headers))
    assert task.json()["attempts"][0]["outcome"] == "FAILED"
    t0 = time.perf_counter()
    asyncio.run(_get(app, f"/dashboard/api/task/{ids[7]}", headers))
    figures["task page poll"] = (time.perf_counter() - t0, len(task.content))

    print(f"\nHTTP, in process, {TASKS} tasks held:")
    for name, (seconds, size) in figures.items():
        report(name, seconds, f"{size / 1024:7.1f} KiB")
    summary = json.loads(asyncio.run(_get(app, "/dashboard/api/queues", headers)).content)
    assert {q["name"] for q in summary["queues"]} == {*QUEUES, "never_used"}
    assert sum(q["total"] for q in summary["queues"]) == TASKS
    # one page at a time: the dashboard never asks the registry for more than a page, and
    # each replica reads the counts once however often it is polled meanwhile
    assert all(args[2] <= PAGE for method, args in registry.calls if method == "list")
    assert sum(method == "metrics" for method, _ in registry.calls) == 4  # of 16 polls
    assert all(size < 256 * 1024 for _, size in figures.values())
    assert all(seconds < 3.0 for seconds, _ in figures.values()), figures


async def _get(app: FastAPI, path: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.get(path, headers=headers)
