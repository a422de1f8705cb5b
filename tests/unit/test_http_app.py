"""The HTTP app's pure parts, without Ray: body parsing, errors, metrics text, Serve config."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from ray.serve.schema import ServeDeploySchema

from raybeam.middleware.metrics import BUCKETS, Histogram, LatencyMetrics, render
from raybeam.record import TaskRecord, TaskSpec, TaskStatus
from serve_app.app import create_app
from serve_app.enqueue import parse_body
from serve_app.errors import ApiError
from serve_app.limits import MAX_ENQUEUE_BODY
from serve_app.outputs import disposition
from tests.support.fake_dns import use_fake_dns

CONFIG = Path(__file__).resolve().parents[2] / "serve_app" / "serve_config.yaml"


class Registry:
    """A registry with one queue, `q(x, y=...)`, that accepts everything."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def call(self, method: str, *args: Any) -> Any:
        if method == "queue_info":
            if args[0] != "q":
                return None
            return {"name": "q", "params": [["x", 1, False], ["y", 1, True]], "authorized": True}
        if method == "submit":
            self.items.extend(args[1])
            return [i["id"] for i in args[1]]
        raise AssertionError(method)


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_dns(monkeypatch)


def request(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        # a loopback Host: an app with no tokens answers nothing else
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(send())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", ([], {}, {})),
        (b"  \n", ([], {}, {})),
        (b'{"x": 1}', ([], {"x": 1}, {})),
        (b'{"args": [1], "kwargs": {"y": 2}}', ([1], {"y": 2}, {})),
        (b'{"args": [1]}', ([1], {}, {})),
        (
            b'{"kwargs": {"x": 1}, "callback_url": "https://e.com/h"}',
            ([], {"x": 1}, {"callback_url": "https://e.com/h"}),
        ),
        # callback_url beside ordinary keys is an ordinary keyword argument
        (
            b'{"x": 1, "callback_url": "https://e.com/h"}',
            ([], {"x": 1, "callback_url": "https://e.com/h"}, {}),
        ),
        (b'{"args": [1], "other": 2}', ([], {"args": [1], "other": 2}, {})),
        (b'{"callback_url": "https://e.com/h"}', ([], {"callback_url": "https://e.com/h"}, {})),
    ],
)
def test_body_forms(raw: bytes, expected: tuple[Any, ...]) -> None:
    assert parse_body(raw) == expected


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{", 400),
        (b"[]", 400),
        (b"1", 400),
        (b"\xff", 400),
        (b"[" * 50_000, 400),
        (b'{"args": {}}', 422),
        (b'{"kwargs": 1}', 422),
    ],
)
def test_bad_bodies(raw: bytes, status: int) -> None:
    with pytest.raises(ApiError) as info:
        parse_body(raw)
    assert info.value.status == status


def test_enqueue_builds_the_put_item() -> None:
    registry = Registry()
    app = create_app(tokens=(), registry=registry)
    answer = request(
        app, "POST", "/taskqueue/q", json={"args": [1], "callback_url": "https://e.com/h"}
    )
    assert answer.status_code == 200
    (item,) = registry.items
    assert item["id"] == answer.json()["task_id"]
    assert item["overrides"] == {"callback_url": "https://e.com/h"}
    assert set(item) == {"id", "payload", "overrides"}


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"json": {"z": 1}}, 422, "InvalidArguments"),
        ({"json": {"kwargs": {"x": 1}, "callback_url": "ftp://x"}}, 400, "InvalidCallbackUrl"),
        ({"json": {"callback_url": "http://10.1.2.3/h", "args": [1]}}, 400, "InvalidCallbackUrl"),
        ({"content": b"x" * (MAX_ENQUEUE_BODY + 1)}, 413, "PayloadTooLarge"),
        ({"content": b"{}", "headers": {"Content-Length": "abc"}}, 400, "InvalidBody"),
    ],
)
def test_enqueue_errors(kwargs: dict[str, Any], status: int, error: str) -> None:
    answer = request(create_app(tokens=(), registry=Registry()), "POST", "/taskqueue/q", **kwargs)
    assert answer.status_code == status
    assert answer.json()["error"] == error


def test_validation_errors_are_json_422() -> None:
    app = create_app(tokens=(), registry=Registry())
    answer = request(app, "GET", "/v2/task/", params={"limit": "many"})
    assert answer.status_code == 422
    body = answer.json()
    assert body["error"] == "ValidationError"
    assert body["detail"][0]["loc"] == ["query", "limit"]
    answer = request(app, "DELETE", "/v2/task/cancel/", content=b"\xff\xfe")
    assert answer.status_code == 422


def test_openapi_describes_every_route() -> None:
    doc = create_app(tokens=(), registry=Registry()).openapi()
    assert "EnqueueBody" in str(doc["paths"]["/taskqueue/{name}"]["post"]["requestBody"])
    record = doc["components"]["schemas"]["TaskRecord"]
    assert set(record["properties"]) >= {"id", "status", "result", "outputs", "stats", "webhook"}
    get = doc["paths"]["/v2/task/{task_id}/"]["get"]["responses"]
    assert get["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/TaskRecord")
    assert set(get) >= {"401", "404"}


def test_serve_config_is_accepted_by_serve() -> None:
    raw = yaml.safe_load(CONFIG.read_text())
    config = ServeDeploySchema.model_validate(raw)
    (app,) = config.applications
    assert app.import_path == "serve_app.deployment:app"
    assert app.route_prefix == "/"
    assert app.name == "raybeam"
    assert config.http_options.host == "127.0.0.1"
    assert config.logging_config is not None and not config.logging_config.enable_access_log


def test_disposition_keeps_the_name_and_stays_ascii() -> None:
    assert disposition("sum.txt") == "attachment; filename=\"sum.txt\"; filename*=UTF-8''sum.txt"
    value = disposition('é "x".txt')
    assert value.isascii()
    assert "filename*=UTF-8''%C3%A9%20%22x%22.txt" in value


# ---- metrics ----------------------------------------------------------------------------


def test_histogram_buckets() -> None:
    h = Histogram()
    for value in (0.0, 0.01, 0.02, 5000.0, -1.0):
        h.observe(value)
    assert h.count == 5
    assert h.counts[0] == 3  # 0, 0.01 and the clamped -1
    assert h.counts[1] == 1
    assert h.counts[-1] == 1
    assert len(h.counts) == len(BUCKETS) + 1


def test_latency_metrics_follow_transitions() -> None:
    hook = LatencyMetrics(host=None)  # type: ignore[arg-type]
    rec = TaskRecord(id="t", queue="q", spec=TaskSpec(function="f"), created_at=100.0)

    def move(new: TaskStatus, at: float) -> None:
        old = rec.status
        if new is TaskStatus.RUNNING:
            rec.attempts += 1
        rec.transition(new, now=at)
        hook.on_transition(rec, old, new)

    move(TaskStatus.RUNNING, 102.0)
    move(TaskStatus.RETRY, 105.0)
    move(TaskStatus.RUNNING, 106.0)
    move(TaskStatus.COMPLETE, 107.5)
    snap = hook.metrics()
    ((labels, _counts, total, count),) = snap["raybeam_task_start_latency_seconds"]
    assert (labels, total, count) == (["q"], 2.0, 1)  # only the first start counts
    runs = {tuple(r[0]): (r[2], r[3]) for r in snap["raybeam_task_run_duration_seconds"]}
    assert runs == {("q", "RETRY"): (3.0, 1), ("q", "COMPLETE"): (1.5, 1)}


def test_render_is_valid_prometheus_text() -> None:
    hook = LatencyMetrics(host=None)  # type: ignore[arg-type]
    hook.start_latency[("q",)] = Histogram()
    hook.start_latency[("q",)].observe(0.3)
    hook.run_duration[("q", "COMPLETE")] = Histogram()
    hook.run_duration[("q", "COMPLETE")].observe(12.0)
    data = {
        "queues": {
            "q": {
                "active_containers": 1,
                "queue_depth": 2,
                "by_status": {"PENDING": 1, "RUNNING": 1, "COMPLETE": 3},
            },
            'odd"name': {"active_containers": 0, "queue_depth": 0, "by_status": {}},
        },
        **hook.metrics(),
    }
    families = {f.name: f for f in text_string_to_metric_families(render(data))}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("raybeam_tasks", (("queue", "q"), ("status", "COMPLETE")))] == 3
    assert samples[("raybeam_tasks", (("queue", "q"), ("status", "EXPIRED")))] == 0
    assert samples[("raybeam_tasks", (("queue", 'odd"name'), ("status", "PENDING")))] == 0
    assert samples[("raybeam_queue_depth", (("queue", "q"),))] == 2
    assert samples[("raybeam_active_containers", (("queue", "q"),))] == 1
    assert families["raybeam_task_start_latency_seconds"].type == "histogram"
    assert (
        samples[("raybeam_task_start_latency_seconds_bucket", (("le", "0.25"), ("queue", "q")))]
        == 0
    )
    assert (
        samples[("raybeam_task_start_latency_seconds_bucket", (("le", "0.5"), ("queue", "q")))] == 1
    )
    assert (
        samples[("raybeam_task_start_latency_seconds_bucket", (("le", "+Inf"), ("queue", "q")))]
        == 1
    )
    assert math.isclose(
        samples[
            ("raybeam_task_run_duration_seconds_sum", (("queue", "q"), ("status", "COMPLETE")))
        ],
        12.0,
    )


def test_render_with_no_queues() -> None:
    text = render({"queues": {}})
    assert "# TYPE raybeam_tasks gauge" in text
    assert list(text_string_to_metric_families(text))
