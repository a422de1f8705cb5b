"""SPEC §8 over HTTP through Ray Serve: idempotency keys, requeue, priorities, delays,
progress events."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from raybeam import TaskContext, task_queue
from tests.support.serving import remove_app

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

TOKEN = "features-token"
SUFFIX = uuid.uuid4().hex[:6]


@task_queue(name=f"feat_echo_{SUFFIX}", cpu=0.25, retries=0)
def echo(x: int, fail: bool = False) -> int:
    if fail:
        raise ValueError("asked to fail")
    return x


@task_queue(name=f"feat_steps_{SUFFIX}", cpu=0.25)
def steps(n: int, context: TaskContext) -> int:
    for i in range(n):
        context.progress({"done": i + 1, "of": n})
        time.sleep(0.3)
    return n


@pytest.fixture(scope="module")
def client(ray_cluster: Any, serve_port: int) -> Iterator[httpx.Client]:
    from serve_app.deployment import deploy

    saved = os.environ.get("RAYBEAM_AUTH_TOKENS")
    os.environ["RAYBEAM_AUTH_TOKENS"] = TOKEN
    try:
        for queue in (echo, steps):
            queue.register()
        url = deploy("127.0.0.1", serve_port)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            yield http
        remove_app()
    finally:
        if saved is None:
            os.environ.pop("RAYBEAM_AUTH_TOKENS", None)
        else:
            os.environ["RAYBEAM_AUTH_TOKENS"] = saved


def final(client: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        record: dict[str, Any] = client.get(f"/v2/task/{task_id}/").json()
        if record["status"] in ("COMPLETE", "FAILED", "CANCELLED", "TIMEOUT", "EXPIRED"):
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.1)


def test_idempotency_key_header_and_body(client: httpx.Client) -> None:
    route = f"/taskqueue/{echo.name}"
    first = client.post(route, json={"x": 1}, headers={"Idempotency-Key": "k-1"})
    again = client.post(route, json={"x": 1}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200
    assert first.json()["task_id"] == again.json()["task_id"]
    in_body = client.post(route, json={"kwargs": {"x": 1}, "idempotency_key": "k-1"})
    assert in_body.json()["task_id"] == first.json()["task_id"]
    conflict = client.post(route, json={"x": 2}, headers={"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "IdempotencyConflict"
    record = final(client, first.json()["task_id"])
    assert record["idempotency_key"] == "k-1" and record["result"] == 1


def test_retry_route_requeues_final_tasks(client: httpx.Client) -> None:
    route = f"/taskqueue/{echo.name}"
    failed = client.post(route, json={"kwargs": {"x": 3, "fail": True}}).json()["task_id"]
    assert final(client, failed)["status"] == "FAILED"
    pending = client.post(route, json={"kwargs": {"x": 4}, "delay": 60}).json()["task_id"]
    refused = client.post("/v2/task/retry/", json={"task_ids": [pending]})
    assert refused.status_code == 409 and refused.json()["error"] == "TaskNotFinal"
    answer = client.post("/v2/task/retry/", json={"task_ids": [failed]})
    assert answer.status_code == 200
    ((made),) = answer.json()["tasks"]
    assert made["retry_of"] == failed
    assert final(client, made["task_id"])["retry_of"] == failed
    assert client.get(f"/v2/task/{failed}/").json()["retried_as"] == made["task_id"]
    assert client.post("/v2/task/retry/", json={"status": "RUNNING"}).status_code == 422
    assert client.post("/v2/task/retry/", json={"task_ids": ["nope"]}).status_code == 404
    client.request("DELETE", "/v2/task/cancel/", json={"task_ids": [pending]})


def test_priority_delay_and_run_at_in_the_body(client: httpx.Client) -> None:
    route = f"/taskqueue/{echo.name}"
    answer = client.post(route, json={"kwargs": {"x": 5}, "priority": 7, "delay": 1.5})
    record = client.get(f"/v2/task/{answer.json()['task_id']}/").json()
    assert record["priority"] == 7 and record["status"] == "PENDING"
    assert record["scheduled_for"].endswith("Z")
    done = final(client, record["id"])
    assert done["result"] == 5
    at = client.post(route, json={"kwargs": {"x": 6}, "run_at": "2020-01-01T00:00:00Z"})
    assert final(client, at.json()["task_id"])["result"] == 6  # a time past: at once
    bad = client.post(route, json={"kwargs": {"x": 7}, "run_at": "tomorrow"})
    assert bad.status_code == 422 and "ISO-8601" in bad.json()["detail"]
    assert client.post(route, json={"args": [1], "priority": "high"}).status_code == 422


def test_progress_events_come_before_the_final_status(client: httpx.Client) -> None:
    task_id = client.post(f"/taskqueue/{steps.name}", json={"n": 4}).json()["task_id"]
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/v2/task/{task_id}/subscribe", timeout=60) as stream:
        kind = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "status"
    assert events[-1][1]["status"] == "COMPLETE"
    progress = [r["progress"] for k, r in events if k == "progress"]
    assert progress and progress[-1] == {"done": 4, "of": 4}
    assert kinds.index("progress") < len(kinds) - 1  # stored before the task ended
    assert "version" not in events[-1][1]
