"""The dashboard (SPEC §9) without Ray: its pages and assets, sign-in and the cookie, the
origin check, the JSON it adds, and how it reads throughput and attempts."""

from __future__ import annotations

import asyncio
import re
from importlib import resources
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from raybeam.middleware.metrics import RUN_DURATION
from serve_app import dashboard, guard
from serve_app.app import create_app
from serve_app.dashboard.router import SharedCounts
from serve_app.dashboard.session import COOKIE, encode, is_public
from serve_app.dashboard.summary import MINUTES, Throughput, attempts, counters, per_minute
from tests.support.fake_dns import use_fake_dns

TOKEN = "dash-token"
ORIGIN = "http://127.0.0.1"


class Registry:
    """Two queues, one of them empty, and a few tasks of the other."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.cancelled: list[str] = []

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        if method == "metrics":
            return {
                "queues": {
                    "busy": {
                        "active_containers": 1,
                        "queue_depth": 2,
                        "by_status": {"PENDING": 1, "RUNNING": 1, "COMPLETE": 4},
                    },
                    "empty": {"active_containers": 0, "queue_depth": 0, "by_status": {}},
                },
                RUN_DURATION: [[["busy", "COMPLETE"], [4], 1.0, 4]],
            }
        if method == "list":
            return [record("t1")], None
        if method == "get":
            return record(args[0]) if args[0] == "t1" else None
        if method == "history":
            return (
                [["PENDING", 1.0], ["RUNNING", 2.0], ["COMPLETE", 3.5]] if args[0] == "t1" else None
            )
        if method == "cancel":
            self.cancelled.extend(args[0])
            return args[0]
        raise AssertionError(method)


def record(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "queue": "busy", "status": "COMPLETE", "failure_reason": None}


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_dns(monkeypatch)


def wired(app: FastAPI) -> bool:
    return any(getattr(route, "path", None) == "/dashboard" for route in app.routes)


def with_dashboard(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The wiring `create_app` gets at merge (see serve_app/dashboard/__init__.py), done
    here while it has not: the router, the cookie middleware, the guard's public routes."""
    if wired(app):
        return app
    app.add_middleware(dashboard.CookieAuth)
    app.include_router(dashboard.dashboard_router())
    pages = r"^/dashboard(/task/[^/]+|/static/[A-Za-z0-9_.-]+|/login|/logout)?$"
    monkeypatch.setattr(guard, "PUBLIC", re.compile(f"(?:{guard.PUBLIC.pattern})|{pages}"))
    return app


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def secured(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    return with_dashboard(create_app(tokens=[TOKEN], registry=registry), monkeypatch)


def send(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def signed_in(**headers: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={encode(TOKEN)}", **headers}


def test_pages_need_no_token_and_allow_nothing_from_other_hosts(secured: FastAPI) -> None:
    for path in ("/dashboard", "/dashboard/task/t1"):
        page = send(secured, "GET", path)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
    etag = send(secured, "GET", "/dashboard").headers["etag"]
    assert send(secured, "GET", "/dashboard", headers={"If-None-Match": etag}).status_code == 304
    assert send(secured, "GET", "/dashboard/static/nothing.js").status_code == 404
    assert send(secured, "GET", "/dashboard/static/..%2Fsession.py").status_code in (401, 404)
    assert (
        send(secured, "GET", "/dashboard/static/common.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )


def test_assets_name_no_other_host() -> None:
    static = resources.files("serve_app.dashboard") / "static"
    names = sorted(entry.name for entry in static.iterdir())
    assert {"dashboard.html", "task.html", "common.js", "queues.js", "task.js"} <= set(names)
    for name in names:
        text = (static / name).read_text()
        # the one absolute URL allowed is SVG's namespace name, which is never fetched
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}", text))
        assert urls <= {"http://www.w3.org"}, (name, urls)
        assert "innerHTML" not in text and "eval(" not in text, name


def test_data_needs_the_token(secured: FastAPI) -> None:
    assert send(secured, "GET", "/dashboard/api/queues").status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert send(secured, "GET", "/dashboard/api/queues", headers=headers).status_code == 200


def test_login_sets_an_httponly_strict_cookie(secured: FastAPI) -> None:
    wrong = send(
        secured, "POST", "/dashboard/login", json={"token": "nope"}, headers={"Origin": ORIGIN}
    )
    assert wrong.status_code == 401
    assert "set-cookie" not in wrong.headers
    ok = send(
        secured, "POST", "/dashboard/login", json={"token": TOKEN}, headers={"Origin": ORIGIN}
    )
    assert ok.status_code == 200, ok.text
    cookie = ok.headers["set-cookie"]
    assert cookie.split(";")[0] == f"{COOKIE}={encode(TOKEN)}"
    attrs = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attrs
    assert "secure" not in attrs  # plain http: a Secure cookie would never come back


def test_the_cookie_is_secure_behind_an_https_public_url(
    secured: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYBEAM_PUBLIC_URL", "https://raybeam.example.com")
    headers = {"Host": "raybeam.example.com", "Origin": "https://raybeam.example.com"}
    ok = send(secured, "POST", "/dashboard/login", json={"token": TOKEN}, headers=headers)
    assert ok.status_code == 200, ok.text
    assert "secure" in {p.strip().lower() for p in ok.headers["set-cookie"].split(";")}
    assert ok.headers["cache-control"] == "no-store"


def test_login_only_from_the_dashboards_own_origin(secured: FastAPI) -> None:
    body = {"token": TOKEN}
    for headers in (
        {},
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": ORIGIN, "Sec-Fetch-Site": "same-site"},
    ):
        answer = send(secured, "POST", "/dashboard/login", json=body, headers=headers)
        assert answer.status_code == 403, headers
        assert "set-cookie" not in answer.headers


def test_the_cookie_authenticates_the_routes_the_pages_call(
    secured: FastAPI, registry: Registry
) -> None:
    assert send(secured, "GET", "/dashboard/api/queues", headers=signed_in()).status_code == 200
    assert send(secured, "GET", "/v2/task/", headers=signed_in()).status_code == 200
    assert send(secured, "GET", "/v2/task/t1/", headers=signed_in()).status_code == 200
    page = send(secured, "GET", "/dashboard/api/task/t1", headers=signed_in()).json()
    assert page["task"]["id"] == "t1"
    assert [a["outcome"] for a in page["attempts"]] == ["COMPLETE"]
    assert page["attempts"][0]["seconds"] == 1.5
    assert send(secured, "GET", "/dashboard/api/task/nope", headers=signed_in()).status_code == 404
    # not for the rest of the API: enqueue and metrics take the header only
    assert send(secured, "GET", "/metrics", headers=signed_in()).status_code == 401
    # nor when another site's page sends it along (an <img>, a link)
    for site in ("cross-site", "same-site"):
        seen = send(secured, "GET", "/v2/task/", headers=signed_in(**{"Sec-Fetch-Site": site}))
        assert seen.status_code == 403
    typed = signed_in(**{"Sec-Fetch-Site": "none"})  # the address bar
    assert send(secured, "GET", "/v2/task/t1/", headers=typed).status_code == 200
    wrong = {"Cookie": f"{COOKIE}={encode('nope')}"}
    assert send(secured, "GET", "/v2/task/", headers=wrong).status_code == 401
    assert send(secured, "GET", "/v2/task/", headers={"Cookie": f"{COOKIE}=%%%"}).status_code == 401


def test_state_changes_by_cookie_need_the_same_origin(secured: FastAPI, registry: Registry) -> None:
    body = {"task_ids": ["t1"]}
    for headers in (
        signed_in(),
        signed_in(Origin="http://evil.example"),
        signed_in(Origin="http://127.0.0.1:8001"),
        signed_in(Origin="null"),
        signed_in(Origin=ORIGIN, **{"Sec-Fetch-Site": "cross-site"}),
    ):
        answer = send(secured, "DELETE", "/v2/task/cancel/", json=body, headers=headers)
        assert answer.status_code == 403, headers
        assert answer.json()["error"] == "Forbidden"
    assert registry.cancelled == []
    headers = signed_in(Origin=ORIGIN, **{"Sec-Fetch-Site": "same-origin"})
    assert (
        send(secured, "DELETE", "/v2/task/cancel/", json=body, headers=headers).status_code == 200
    )
    assert registry.cancelled == ["t1"]
    # a client with the header needs no Origin: no browser sends the header on its own
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert send(secured, "DELETE", "/v2/task/cancel/", json=body, headers=bearer).status_code == 200


def test_logout_clears_the_cookie(secured: FastAPI) -> None:
    answer = send(secured, "POST", "/dashboard/logout", headers={"Origin": ORIGIN})
    assert answer.status_code == 200
    assert answer.headers["set-cookie"].startswith(f'{COOKIE}=""') or "max-age=0" in (
        answer.headers["set-cookie"].lower()
    )


def test_open_mode_needs_no_sign_in_on_loopback(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAYBEAM_AUTH_TOKENS", raising=False)
    app = with_dashboard(create_app(tokens=[], registry=registry), monkeypatch)
    assert send(app, "GET", "/dashboard").status_code == 200
    summary = send(app, "GET", "/dashboard/api/queues").json()
    assert summary["open"] is True
    assert send(app, "GET", "/dashboard", headers={"Host": "evil.example"}).status_code == 403
    other = {"Origin": "http://evil.example"}
    assert (
        send(
            app, "DELETE", "/v2/task/cancel/", json={"task_ids": ["t1"]}, headers=other
        ).status_code
        == 403
    )


def test_every_registered_queue_is_listed(secured: FastAPI) -> None:
    answer = send(secured, "GET", "/dashboard/api/queues", headers=signed_in())
    rows = {q["name"]: q for q in answer.json()["queues"]}
    assert set(rows) == {"busy", "empty"}
    assert rows["empty"]["total"] == 0 and rows["empty"]["by_status"]["PENDING"] == 0
    busy = rows["busy"]
    assert (busy["queue_depth"], busy["running"], busy["active_containers"]) == (2, 1, 1)
    assert busy["by_status"]["COMPLETE"] == 4
    assert len(busy["finished_per_minute"]) == MINUTES


def test_public_dashboard_routes() -> None:
    assert is_public("GET", "/dashboard")
    assert is_public("GET", "/dashboard/task/abc")
    assert is_public("GET", "/dashboard/static/common.js")
    assert is_public("POST", "/dashboard/login")
    assert not is_public("POST", "/dashboard")  # an enqueue to a queue named "dashboard"
    assert not is_public("GET", "/dashboard/api/queues")
    assert not is_public("DELETE", "/dashboard/task/abc")
    assert not is_public("GET", "/dashboard/static/a/b")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throughput_per_minute_from_growing_counters() -> None:
    clock = Clock()
    rate = Throughput(clock)
    assert per_minute(rate.windows(), "q") == [None] * MINUTES
    done = 0
    for _ in range(181):  # three minutes, a sample a second, 2 tasks done a second
        rate.observe({"q": {"COMPLETE": done, "RETRY": done // 10}})
        clock.now += 1
        done += 2
    minutes = per_minute(rate.windows(), "q")
    assert minutes[:-3] == [None] * (MINUTES - 3)
    assert minutes[-3:] == [120, 120, 120]
    assert per_minute(rate.windows(), "other") == [None] * (MINUTES - 3) + [0, 0, 0]
    # a registry that started again counts from zero: history before it is dropped
    rate.observe({"q": {"COMPLETE": 1}})
    assert rate.span() == 0.0


def test_throughput_keeps_samples_bounded() -> None:
    clock = Clock()
    rate = Throughput(clock)
    for i in range(5000):
        rate.observe({"q": {"COMPLETE": i}})
        clock.now += 0.3
    assert len(rate.samples) <= (MINUTES + 1) * 60 + 2
    assert rate.span() <= (MINUTES + 1) * 60


def test_polls_share_one_read_of_the_counts(registry: Registry) -> None:
    clock = Clock()
    counts = SharedCounts(ttl=1.0, clock=clock)

    async def polls(n: int) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(counts.get(registry) for _ in range(n))))

    assert len({id(answer) for answer in asyncio.run(polls(20))}) == 1
    clock.now += 0.5
    asyncio.run(polls(5))
    assert [method for method, _ in registry.calls] == ["metrics"]
    clock.now += 1.0
    asyncio.run(polls(5))
    assert [method for method, _ in registry.calls] == ["metrics", "metrics"]
    assert counts.throughput.span() == 1.5


def test_slow_counts_are_read_less_often(registry: Registry) -> None:
    clock = Clock()

    class Slow(Registry):
        async def call(self, method: str, *args: Any) -> Any:
            clock.now += 0.25  # a registry holding many tasks: a quarter second a count
            return await super().call(method, *args)

    slow = Slow()
    counts = SharedCounts(ttl=1.0, clock=clock)
    asyncio.run(counts.get(slow))
    assert counts.ttl == 5.0  # at most a twentieth of the registry's time
    clock.now += 4.0
    asyncio.run(counts.get(slow))
    assert len(slow.calls) == 1
    clock.now += 1.0
    asyncio.run(counts.get(slow))
    assert len(slow.calls) == 2


def test_counters_from_metrics() -> None:
    data = {RUN_DURATION: [[["a", "COMPLETE"], [1], 1.0, 3], [["a", "RETRY"], [1], 1.0, 2]]}
    assert counters(data) == {"a": {"COMPLETE": 3, "RETRY": 2}}


def test_attempts_from_history() -> None:
    history = [
        ("PENDING", 10.0),
        ("RUNNING", 11.0),
        ("RETRY", 12.5),
        ("RUNNING", 14.0),
        ("FAILED", 15.0),
    ]
    found = attempts(history, "Traceback ...\nValueError: no")
    assert [(a["n"], a["outcome"], a["seconds"]) for a in found] == [
        (1, "RETRY", 1.5),
        (2, "FAILED", 1.0),
    ]
    assert found[0]["failure_reason"] is None
    assert found[1]["failure_reason"] == "Traceback ...\nValueError: no"
    running = attempts([("PENDING", 1.0), ("RUNNING", 2.0)], None)
    assert running[0]["outcome"] == "RUNNING" and running[0]["ended_at"] is None
    assert attempts([("PENDING", 1.0), ("CANCELLED", 2.0)], None) == []
