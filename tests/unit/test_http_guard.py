"""The guard in front of every route (SPEC §10), driven as a plain ASGI app without Ray:
tokens before any body, body caps and the body deadline, Host and Origin in open mode, and
the loopback-only bind of an open API."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from raybeam.config import Settings
from raybeam.errors import InvalidConfiguration
from serve_app.app import create_app
from serve_app.deployment import check_bind
from serve_app.guard import is_enqueue, is_loopback_name

TOKEN = "guard-token"


class Registry:
    async def call(self, method: str, *args: Any) -> Any:
        if method == "queue_info":
            return {"name": args[0], "params": [["x", 1, True]], "authorized": args[0] != "open"}
        if method == "submit":
            return [item["id"] for item in args[1]]
        if method in ("cancel", "get"):
            return [] if method == "cancel" else None
        if method == "list":
            return [], None
        raise AssertionError(method)


def call(
    tokens: tuple[str, ...],
    method: str,
    path: str,
    headers: dict[str, str],
    body: list[bytes] | None = None,
    gap: float = 0.0,
) -> tuple[int, dict[str, Any], dict[str, str], int]:
    """(status, JSON body, headers, body chunks the app asked for) of one request."""
    app = create_app(tokens=tokens, registry=Registry())
    chunks = list(body or [])
    asked = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if gap:
            await asyncio.sleep(gap)
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.sleep(3600)  # nothing more: the client waits for the answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path.split("?")[0],
        "raw_path": path.split("?")[0].encode(),
        "query_string": path.partition("?")[2].encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    answer_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], json.loads(payload), answer_headers, asked


LOOPBACK = {"host": "127.0.0.1:8000"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v2/task/cancel/"),
        ("GET", "/v2/task/"),
        ("GET", "/v2/task/abc/"),
        ("GET", "/metrics"),
        ("POST", "/v2/task/retry/"),
    ],
)
def test_a_missing_token_is_401_before_a_byte_of_the_body_is_read(method: str, path: str) -> None:
    headers = {**LOOPBACK, "content-type": "application/json", "content-length": "900000"}
    status, body, answer_headers, asked = call((TOKEN,), method, path, headers, [b"{"])
    assert (status, body["error"], asked) == (401, "Unauthorized", 0)
    assert answer_headers["connection"] == "close"


def test_an_enqueue_on_a_private_queue_checks_the_token_before_the_body() -> None:
    headers = {**LOOPBACK, "content-length": "10"}
    status, body, _, asked = call((TOKEN,), "POST", "/taskqueue/private", headers, [b"{}"])
    assert (status, body["error"], asked) == (401, "Unauthorized", 0)
    status, body, _, asked = call(
        (TOKEN,), "POST", "/open", {**LOOPBACK, "content-length": "2"}, [b"{}"]
    )
    assert status == 200 and set(body) == {"task_id"}


@pytest.mark.parametrize(
    ("path", "cap"), [("/v2/task/cancel/", 2**20), ("/taskqueue/q", 16 * 2**20), ("/q", 16 * 2**20)]
)
def test_bodies_are_capped_per_route(path: str, cap: int) -> None:
    auth = {**LOOPBACK, "authorization": f"Bearer {TOKEN}"}
    method = "DELETE" if path.startswith("/v2") else "POST"
    declared = {**auth, "content-length": str(cap + 1)}
    status, body, _, asked = call((TOKEN,), method, path, declared, [b"x"])
    assert (status, body["error"], asked) == (413, "PayloadTooLarge", 0)
    # chunked, no length given: counted as it arrives, refused once past the cap
    chunked = {**auth, "transfer-encoding": "chunked"}
    parts = [b"[" + b" " * (2**20 - 1)] * (cap // 2**20 + 1)
    status, body, _, _ = call((TOKEN,), method, path, chunked, parts)
    assert (status, body["error"]) == (413, "PayloadTooLarge")


def test_a_body_slower_than_the_body_timeout_is_408(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYBEAM_BODY_TIMEOUT", "0.5")
    headers = {**LOOPBACK, "authorization": f"Bearer {TOKEN}", "content-length": "100"}
    drip = [b" "] * 100
    status, body, answer_headers, _ = call(
        (TOKEN,), "DELETE", "/v2/task/cancel/", headers, drip, gap=0.1
    )
    assert (status, body["error"]) == (408, "RequestTimeout")
    assert "RAYBEAM_BODY_TIMEOUT" in body["detail"] and answer_headers["connection"] == "close"
    status, body, _, _ = call(
        (TOKEN,), "POST", "/q", {**headers, "content-length": "100"}, drip, gap=0.1
    )
    assert (status, body["error"]) == (408, "RequestTimeout")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"host": "127.0.0.1:8000"}, 200),
        ({"host": "localhost"}, 200),
        ({"host": "[::1]:8000"}, 200),
        ({"host": "api.localhost:8000"}, 200),
        ({"host": "raybeam.example.org"}, 200),  # the public host
        ({"host": "evil.example:8000"}, 403),
        ({"host": "127.0.0.1.nip.io:8000"}, 403),
        ({"host": ""}, 403),
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, 200),
        ({"host": "localhost:8000", "origin": "http://localhost:8000"}, 200),
        ({"host": "127.0.0.1:8000", "origin": "https://raybeam.example.org"}, 200),
        ({"host": "127.0.0.1:8000", "origin": "http://evil.example"}, 403),
        ({"host": "127.0.0.1:8000", "origin": "http://localhost:8000"}, 403),
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:9000"}, 403),
        ({"host": "127.0.0.1:8000", "origin": "null"}, 403),
        ({"host": "127.0.0.1:8000", "origin": "https://raybeam.example.org:444"}, 403),
    ],
)
def test_open_mode_serves_this_machine_and_the_public_host_only(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], status: int
) -> None:
    monkeypatch.setenv("RAYBEAM_PUBLIC_URL", "https://raybeam.example.org")
    monkeypatch.delenv("RAYBEAM_AUTH_TOKENS", raising=False)
    got, body, _, _ = call((), "GET", "/v2/task/?limit=1", headers)
    assert got == status, body
    if status == 403:
        assert body["error"] == "Forbidden"


def test_with_tokens_host_and_origin_are_not_the_guard_s_business() -> None:
    headers = {
        "host": "api.example.org",
        "origin": "https://app.example.org",
        "authorization": f"Bearer {TOKEN}",
    }
    assert call((TOKEN,), "GET", "/v2/task/?limit=1", headers)[0] == 200


def test_route_classes() -> None:
    assert is_enqueue("POST", "/taskqueue/q") and is_enqueue("POST", "/q")
    assert not is_enqueue("POST", "/v2/task/retry/") and not is_enqueue("GET", "/q")
    assert not is_enqueue("POST", "/healthz")
    assert all(
        is_loopback_name(h)
        for h in (
            "localhost",
            "LOCALHOST.",
            "a.localhost",
            "127.9.9.9",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        )
    )
    assert not any(is_loopback_name(h) for h in ("localhost.evil", "10.0.0.1", "::", "0.0.0.0", ""))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "my-server", "10.0.0.1"])
def test_an_open_api_binds_only_loopback(host: str) -> None:
    with pytest.raises(InvalidConfiguration, match="--insecure-no-auth"):
        check_bind(Settings(), host, insecure_no_auth=False)
    check_bind(Settings(), host, insecure_no_auth=True)
    check_bind(Settings(auth_tokens=("t",)), host, insecure_no_auth=False)
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(Settings(), loopback, insecure_no_auth=False)
