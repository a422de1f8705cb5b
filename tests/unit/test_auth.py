"""Token checks of the HTTP API: every Authorization form, 401 answers, open mode. No Ray."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from serve_app.app import create_app
from serve_app.auth import authenticate, candidates, is_authorized
from serve_app.errors import ApiError

TOKENS = ("s3cret-token", "other:token")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeRegistry:
    """Answers like a registry with one public queue and one private queue, and no tasks."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, list[dict[str, Any]]]] = []

    async def call(self, method: str, *args: Any) -> Any:
        if method == "queue_info":
            name = args[0]
            if name in ("private", "public"):
                return {"name": name, "params": [["x", 1, True]], "authorized": name == "private"}
            return None
        if method == "submit":
            self.submitted.append((args[0], args[1]))
            return [item["id"] for item in args[1]]
        if method == "get":
            return None
        raise AssertionError(f"unexpected registry call {method}")


class AppClient:
    """Requests to the app in this process, through httpx's ASGI transport."""

    def __init__(self, app: FastAPI, base_url: str = "http://127.0.0.1:8000") -> None:
        self.app = app
        self.base_url = base_url

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture
def client() -> AppClient:
    return AppClient(create_app(tokens=TOKENS, registry=FakeRegistry()))


@pytest.mark.parametrize(
    "header",
    [
        "Bearer s3cret-token",
        "bearer s3cret-token",
        "Basic s3cret-token",
        f"Basic {b64('s3cret-token')}",
        f"Basic {b64('alice:s3cret-token')}",
        f"Basic {b64(':s3cret-token')}",
        "Bearer other:token",
        f"Basic {b64('other:token')}",
        "Bearer   s3cret-token  ",
    ],
)
def test_accepted_forms(header: str) -> None:
    assert is_authorized(header, TOKENS)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        "Bearer s3cret-tokenX",
        "Bearer s3cret",
        "Token s3cret-token",
        "s3cret-token",
        f"Basic {b64('alice:wrong')}",
        f"Basic {b64('s3cret-token:alice')}",
        f"Bearer {b64('s3cret-token')}",
        "Basic !!!not-base64",
        "Bearer s3cret-tokén",
    ],
)
def test_refused_forms(header: str | None) -> None:
    assert not is_authorized(header, TOKENS)


def test_candidates_of_basic_user_token() -> None:
    assert candidates(f"Basic {b64('u:t')}") == [b64("u:t").encode(), b"u:t", b"t"]


def test_no_tokens_configured_lets_everything_through() -> None:
    authenticate((), None)
    authenticate((), "Bearer anything")
    with pytest.raises(ApiError) as info:
        authenticate(("t",), None)
    assert info.value.status == 401


def test_healthz_needs_no_token(client: AppClient) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


@pytest.mark.parametrize("header", [None, "Bearer nope", f"Basic {b64('u:nope')}"])
def test_missing_or_wrong_token_is_401_json(client: AppClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("GET", "/v2/task/abc/"),
        ("GET", "/v2/task/"),
        ("GET", "/v2/task/abc/subscribe"),
        ("GET", "/metrics"),
        ("DELETE", "/v2/task/cancel/"),
        ("POST", "/taskqueue/private"),
        ("POST", "/private"),
    ]:
        answer = client.request(method, path, headers=headers)
        assert answer.status_code == 401, (method, path)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        body = answer.json()
        assert body["error"] == "Unauthorized"
        assert "token" in body["detail"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer s3cret-token",
        "Basic s3cret-token",
        f"Basic {b64('s3cret-token')}",
        f"Basic {b64('me:s3cret-token')}",
    ],
)
def test_good_token_reaches_the_route(client: AppClient, header: str) -> None:
    answer = client.get("/v2/task/abc/", headers={"Authorization": header})
    assert answer.status_code == 404
    assert answer.json()["error"] == "TaskNotFound"


def test_unknown_queue_is_401_before_404(client: AppClient) -> None:
    # without a token nobody learns which queues exist
    assert client.post("/taskqueue/nope", json={}).status_code == 401
    answer = client.post(
        "/taskqueue/nope", json={}, headers={"Authorization": "Bearer s3cret-token"}
    )
    assert answer.status_code == 404
    assert answer.json()["error"] == "QueueNotFound"


def test_public_queue_takes_no_token(client: AppClient) -> None:
    answer = client.post("/taskqueue/public", json={"x": 1})
    assert answer.status_code == 200
    assert set(answer.json()) == {"task_id"}
    # reading the task still needs one
    assert client.get(f"/v2/task/{answer.json()['task_id']}/").status_code == 401


def test_open_api_when_no_token_is_configured() -> None:
    client = AppClient(create_app(tokens=(), registry=FakeRegistry()))
    assert client.get("/v2/task/abc/").status_code == 404
    assert client.post("/private", json={"x": 2}).status_code == 200
