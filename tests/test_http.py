"""The HTTP API (SPEC §3) through real HTTP to a Ray Serve app on the session's Ray cluster."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import raybeam
from raybeam import Output, task_queue
from raybeam.storage import storage_from_settings
from tests.support.serving import remove_app

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

TOKEN = "http-test-token"
SECOND_TOKEN = "second-token"
SUFFIX = uuid.uuid4().hex[:6]
RECORD_KEYS = {
    "id", "queue", "status", "created_at", "started_at", "ended_at", "updated_at",
    "container_id", "attempts", "result", "failure_reason", "outputs", "stats",
    # SPEC §8
    "priority", "scheduled_for", "idempotency_key", "retry_of", "retried_as", "progress",
    "next_attempt_at",
}  # fmt: skip
NEVER_STARTS = 64  # CPUs no node of the test cluster has: such tasks stay PENDING


@task_queue(name=f"http_double_{SUFFIX}", cpu=0.25, retries=0)
def double(x: int, y: int = 0) -> dict[str, int]:
    return {"result": x * 2 + y}


@task_queue(name=f"http_files_{SUFFIX}", cpu=0.25, retries=0)
def files() -> None:
    Output.from_bytes("hello.txt", b"hello world").save()


@task_queue(name=f"http_public_{SUFFIX}", cpu=0.25, retries=0, authorized=False)
def public(x: int = 1) -> int:
    return x


@task_queue(name=f"http_stuck_{SUFFIX}", cpu=NEVER_STARTS, max_pending_tasks=50)
def stuck(x: int = 0) -> int:
    return x


@task_queue(name=f"http_listed_{SUFFIX}", cpu=NEVER_STARTS, max_pending_tasks=10)
def listed(x: int = 0) -> int:
    return x


@task_queue(name=f"http_full_{SUFFIX}", cpu=NEVER_STARTS, max_pending_tasks=1)
def full(x: int = 0) -> int:
    return x


@task_queue(name=f"http_crowded_{SUFFIX}", cpu=NEVER_STARTS, max_pending_tasks=12)
def crowded(x: int = 0) -> int:
    return x


QUEUES = [double, files, public, stuck, listed, full, crowded]


@dataclass
class Api:
    url: str
    client: httpx.Client  # sends the token
    anonymous: httpx.Client  # sends none


@pytest.fixture(scope="module")
def api(ray_cluster: Any, serve_port: int) -> Iterator[Api]:
    from serve_app.deployment import deploy

    names = ("RAYBEAM_AUTH_TOKENS", "RAYBEAM_WEBHOOK_ALLOWED_NETWORKS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["RAYBEAM_AUTH_TOKENS"] = f"{TOKEN},{SECOND_TOKEN}"
    # callback URLs here name a closed loopback port: open loopback to webhooks, as an
    # operator would (refusals: test_http_hardening.py)
    os.environ["RAYBEAM_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    try:
        for queue in QUEUES:
            queue.register()
        url = deploy("127.0.0.1", serve_port)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with (
            httpx.Client(base_url=url, headers=headers, timeout=30) as client,
            httpx.Client(base_url=url, timeout=30) as anonymous,
        ):
            assert anonymous.get("/healthz").status_code == 200
            yield Api(url, client, anonymous)
            ids = [
                t.id
                for q in (stuck, listed, full, crowded)
                for t in raybeam.list_tasks(queue=q.name)
            ]
            if ids:
                client.request("DELETE", "/v2/task/cancel/", json={"task_ids": ids})
        remove_app()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def enqueue(api: Api, queue: str, body: Any = None, **kwargs: Any) -> str:
    answer = api.client.post(f"/taskqueue/{queue}", json=body, **kwargs)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"task_id"}
    task_id: str = answer.json()["task_id"]
    return task_id


def assert_error(answer: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"error", "detail"}
    if error is not None:
        assert body["error"] == error
    return body


def events(answer: httpx.Response) -> Iterator[dict[str, Any]]:
    """The `status` events of an event stream, until it ends."""
    name = None
    for line in answer.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            assert name == "status"
            yield json.loads(line[len("data: ") :])


# ---- enqueue ----------------------------------------------------------------------------


def test_healthz_needs_no_token_and_openapi_lists_every_route(api: Api) -> None:
    assert api.anonymous.get("/healthz").json() == {"status": "ok"}
    paths = api.anonymous.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/taskqueue/{name}",
        "/{name}",
        "/v2/task/",
        "/v2/task/{task_id}/",
        "/v2/task/cancel/",
        "/v2/task/retry/",
        "/v2/task/{task_id}/subscribe",
        "/output/id/{output_id}",
        "/healthz",
        "/metrics",
    }


def test_enqueue_forms_and_the_exact_record(api: Api) -> None:
    explicit = enqueue(api, double.name, {"args": [2], "kwargs": {"y": 1}})
    whole = enqueue(api, double.name, {"x": 3})
    short = api.client.post(f"/{double.name}", json={"args": [4]})
    assert short.status_code == 200
    assert raybeam.Task(explicit).result(timeout=60) == {"result": 5}
    assert raybeam.Task(whole).result(timeout=60) == {"result": 6}
    assert raybeam.Task(short.json()["task_id"]).result(timeout=60) == {"result": 8}

    record = api.client.get(f"/v2/task/{explicit}/").json()
    assert set(record) == RECORD_KEYS
    assert record["id"] == explicit
    assert record["queue"] == double.name
    assert record["status"] == "COMPLETE"
    assert record["result"] == {"result": 5}
    assert record["attempts"] == 1
    assert record["failure_reason"] is None
    assert record["outputs"] == []
    assert isinstance(record["container_id"], str) and record["container_id"]
    assert set(record["stats"]) == {"active_containers", "queue_depth"}
    for key in ("created_at", "started_at", "ended_at", "updated_at"):
        assert record[key].endswith("Z")
    assert record["created_at"] <= record["started_at"] <= record["ended_at"]
    assert record == raybeam.Task(explicit).info()


def test_empty_body_and_callback_url_in_the_explicit_form(api: Api) -> None:
    empty = api.client.post(f"/taskqueue/{stuck.name}")
    assert empty.status_code == 200
    hook = "http://127.0.0.1:9/hook"
    with_hook = enqueue(api, stuck.name, {"kwargs": {"x": 1}, "callback_url": hook})
    record = api.client.get(f"/v2/task/{with_hook}/").json()
    assert set(record) == RECORD_KEYS | {"webhook"}
    assert record["webhook"] == {"url": hook, "delivered": False, "attempts": []}
    # beside other keys, callback_url is just a keyword argument the handler lacks
    assert_error(
        api.client.post(f"/taskqueue/{stuck.name}", json={"x": 1, "callback_url": hook}), 422
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'"text"', 400),
        (b"\xff\xfe\x00", 400),
        (b"[" * 100_000, 400),
        (b'{"args": 1}', 422),
        (b'{"kwargs": []}', 422),
        (b'{"args": [1, 2, 3]}', 422),
        (b'{"nope": 1}', 422),
        (b'{"args": [1], "callback_url": "ftp://example.com"}', 400),
        (b'{"args": [1], "callback_url": 5}', 400),
    ],
)
def test_bad_bodies(api: Api, body: bytes, status: int) -> None:
    answer = api.client.post(
        f"/taskqueue/{double.name}", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(answer, status)


def test_unknown_queue_is_404_and_full_queue_429(api: Api) -> None:
    assert_error(api.client.post("/taskqueue/no_such_queue", json={}), 404, "QueueNotFound")
    assert_error(api.client.post("/no_such_queue", json={}), 404, "QueueNotFound")
    enqueue(api, full.name, {})
    body = assert_error(api.client.post(f"/taskqueue/{full.name}", json={}), 429, "QueueFull")
    assert "max_pending_tasks" in body["detail"]


def test_concurrent_requests_are_admitted_or_refused_one_by_one(api: Api) -> None:
    # requests that arrive together reach the registry together (one call); each is still
    # answered on its own: the first 12 fit, the rest are 429, nothing is lost or doubled
    async def post_all() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as client:
            return await asyncio.gather(
                *(client.post(f"/taskqueue/{crowded.name}", json={"x": i}) for i in range(40))
            )

    answers = asyncio.run(post_all())
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 12 + [429] * 28, codes
    ids = {a.json()["task_id"] for a in answers if a.status_code == 200}
    assert ids == {t.id for t in raybeam.list_tasks(queue=crowded.name)}
    for answer in answers:
        if answer.status_code == 429:
            assert_error(answer, 429, "QueueFull")


def test_bodies_over_16_mib_are_413(api: Api) -> None:
    big = b" " * (16 * 2**20 + 1)
    assert_error(api.client.post(f"/taskqueue/{double.name}", content=big), 413, "PayloadTooLarge")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the streaming count decides
        for _ in range(17):
            yield b" " * 2**20

    assert_error(api.client.post(f"/taskqueue/{double.name}", content=chunked()), 413)


# ---- auth -------------------------------------------------------------------------------


def test_auth_forms(api: Api) -> None:
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    path = "/v2/task/?limit=1"
    for header in [
        f"Bearer {TOKEN}",
        f"Bearer {SECOND_TOKEN}",
        f"Basic {TOKEN}",
        f"Basic {b64(TOKEN)}",
        f"Basic {b64('user:' + TOKEN)}",
    ]:
        assert api.anonymous.get(path, headers={"Authorization": header}).status_code == 200, header
    for headers in [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {b64('u:x')}"},
    ]:
        answer = api.anonymous.get(path, headers=headers)
        assert_error(answer, 401, "Unauthorized")
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # a queue with authorized=False takes work without a token; reading it needs one
    answer = api.anonymous.post(f"/taskqueue/{public.name}", json={"x": 7})
    assert answer.status_code == 200
    assert_error(api.anonymous.get(f"/v2/task/{answer.json()['task_id']}/"), 401)
    assert_error(api.anonymous.post(f"/taskqueue/{double.name}", json={"x": 1}), 401)


# ---- tasks ------------------------------------------------------------------------------


def test_unknown_task_is_404(api: Api) -> None:
    assert_error(api.client.get("/v2/task/no-such-task/"), 404, "TaskNotFound")
    assert_error(api.client.get("/v2/task/no-such-task/subscribe"), 404, "TaskNotFound")


def test_listing_with_filters_and_a_cursor(api: Api) -> None:
    ids = [enqueue(api, listed.name, {"x": i}) for i in range(3)]
    first = api.client.get("/v2/task/", params={"queue": listed.name, "limit": 2}).json()
    assert [t["id"] for t in first["tasks"]] == ids[::-1][:2]
    assert all(set(t) == RECORD_KEYS for t in first["tasks"])
    assert first["next_cursor"] == ids[1]
    second = api.client.get(
        "/v2/task/", params={"queue": listed.name, "limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [t["id"] for t in second["tasks"]] == [ids[0]]
    assert second["next_cursor"] is None
    pending = api.client.get("/v2/task/", params={"queue": listed.name, "status": "pending"}).json()
    assert [t["id"] for t in pending["tasks"]] == ids[::-1]
    done = api.client.get("/v2/task/", params={"queue": listed.name, "status": "COMPLETE"}).json()
    assert done == {"tasks": [], "next_cursor": None}
    assert_error(api.client.get("/v2/task/", params={"status": "SLEEPING"}), 422)
    assert_error(api.client.get("/v2/task/", params={"limit": 0}), 422, "ValidationError")


def test_subscribe_then_cancel_ends_the_stream(api: Api) -> None:
    task_id = enqueue(api, stuck.name, {"x": 1})
    with api.client.stream("GET", f"/v2/task/{task_id}/subscribe") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        stream = events(answer)
        first = next(stream)
        assert first["status"] == "PENDING"
        assert set(first) == RECORD_KEYS
        cancelled = api.client.request(
            "DELETE", "/v2/task/cancel/", json={"task_ids": [task_id, "no-such-task"]}
        )
        assert cancelled.status_code == 200
        assert cancelled.json() == {}
        rest = list(stream)
    assert [e["status"] for e in rest] == ["CANCELLED"]
    assert api.client.get(f"/v2/task/{task_id}/").json()["status"] == "CANCELLED"
    # a final task: one event, and the stream ends
    with api.client.stream("GET", f"/v2/task/{task_id}/subscribe") as answer:
        assert [e["status"] for e in events(answer)] == ["CANCELLED"]
    assert_error(api.client.request("DELETE", "/v2/task/cancel/", json={"ids": []}), 422)


def test_subscribe_follows_a_task_to_complete(api: Api) -> None:
    task_id = enqueue(api, double.name, {"x": 5})
    with api.client.stream("GET", f"/v2/task/{task_id}/subscribe") as answer:
        statuses = [e["status"] for e in events(answer)]
    assert statuses[-1] == "COMPLETE"
    assert statuses == [s for s in ("PENDING", "RUNNING", "COMPLETE") if s in statuses]


# ---- outputs ----------------------------------------------------------------------------


def test_output_links(api: Api) -> None:
    task_id = enqueue(api, files.name)
    raybeam.Task(task_id).result(timeout=60)
    (output,) = api.client.get(f"/v2/task/{task_id}/").json()["outputs"]
    assert output["name"] == "hello.txt"
    assert output["expires_in"] == 3600
    url = urlsplit(output["url"])
    link = f"{url.path}?{url.query}"
    got = api.anonymous.get(link)  # a signed link needs no token
    assert got.status_code == 200
    assert got.content == b"hello world"
    assert "hello.txt" in got.headers["content-disposition"]

    output_id = url.path.rsplit("/", 1)[-1]
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    tampered = {**query, "signature": "0" * len(query["signature"])}
    assert_error(api.anonymous.get(url.path, params=tampered), 403, "Forbidden")
    assert_error(api.anonymous.get(url.path), 403)
    past = int(time.time()) - 10
    key = storage_from_settings().signing_key()
    expired_sig = hmac.new(key, f"{output_id}.{past}".encode(), hashlib.sha256).hexdigest()
    assert_error(
        api.anonymous.get(url.path, params={"expires": past, "signature": expired_sig}), 403
    )
    unknown = uuid.uuid4().hex
    future = int(time.time()) + 60
    good_sig = hmac.new(key, f"{unknown}.{future}".encode(), hashlib.sha256).hexdigest()
    assert_error(
        api.anonymous.get(
            f"/output/id/{unknown}", params={"expires": future, "signature": good_sig}
        ),
        404,
    )


# ---- service ----------------------------------------------------------------------------


def test_metrics(api: Api) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    task_id = enqueue(api, double.name, {"x": 1})
    raybeam.Task(task_id).result(timeout=60)
    assert_error(api.anonymous.get("/metrics"), 401)
    answer = api.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    q = double.name
    assert samples[("raybeam_tasks", (("queue", q), ("status", "COMPLETE")))] >= 1
    assert samples[("raybeam_queue_depth", (("queue", q),))] == 0
    assert families["raybeam_task_start_latency_seconds"].type == "histogram"
    assert samples[("raybeam_task_start_latency_seconds_count", (("queue", q),))] >= 1
    run = ("raybeam_task_run_duration_seconds_count", (("queue", q), ("status", "COMPLETE")))
    assert samples[run] >= 1


def test_unknown_routes_are_json_404(api: Api) -> None:
    assert_error(api.client.get("/nope/nope"), 404, "NotFound")
    assert_error(api.client.put("/healthz"), 405)


# ---- property-based: no input makes the server fail -------------------------------------


@task_queue(name=f"http_fuzzed_{SUFFIX}", cpu=NEVER_STARTS, max_pending_tasks=20)
def fuzzed(x: int, y: str = "", z: list[int] | None = None) -> int:
    return x


def test_openapi_fuzzing_finds_no_5xx(api: Api) -> None:
    """Schemathesis cases for every operation, valid and invalid, with and without a real queue."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    fuzzed.register()
    schema = schemathesis.openapi.from_dict(api.anonymous.get("/openapi.json").json())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    calls = 0

    def run(strategy: Any, examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            nonlocal calls
            calls += 1
            answer = case.call(base_url=api.url, headers=auth, timeout=30)
            if answer.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {answer.status_code}: {answer.text[:300]}"
                )

        # no invalid request exists for an operation without inputs
        with contextlib.suppress(Unsatisfiable):
            check()

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(operation.as_strategy(generation_mode=mode), 25)
            if "{name}" in operation.path:
                run(
                    operation.as_strategy(
                        generation_mode=mode, path_parameters={"name": fuzzed.name}
                    ),
                    25,
                )
    try:
        assert calls > 300
        assert failures == []
    finally:
        ids = [t.id for t in raybeam.list_tasks(queue=fuzzed.name)]
        if ids:
            api.client.request("DELETE", "/v2/task/cancel/", json={"task_ids": ids})


def test_any_body_to_a_real_queue_is_answered_without_5xx(api: Api) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    fuzzed.register()
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )
    call = st.fixed_dictionaries(
        {"x": st.integers()}, optional={"y": st.text(), "z": st.lists(st.integers())}
    )
    bodies = st.one_of(
        call.map(lambda kw: json.dumps(kw).encode()),
        call.map(lambda kw: json.dumps({"kwargs": kw}).encode()),
        st.lists(json_values, max_size=3).map(lambda a: json.dumps({"args": a}).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    )
    seen: list[int] = []

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(body=bodies)
    def check(body: bytes) -> None:
        answer = api.client.post(f"/taskqueue/{fuzzed.name}", content=body)
        seen.append(answer.status_code)
        assert answer.status_code in (200, 400, 422, 429), answer.text
        assert set(answer.json()) == (
            {"task_id"} if answer.status_code == 200 else {"error", "detail"}
        )

    try:
        check()
        assert {200, 400, 422} <= set(seen)
    finally:
        ids = [t.id for t in raybeam.list_tasks(queue=fuzzed.name)]
        if ids:
            api.client.request("DELETE", "/v2/task/cancel/", json={"task_ids": ids})
