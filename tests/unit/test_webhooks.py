"""Webhook payload, signing, verification and delivery against a real HTTP receiver on
loopback (allowed to webhooks here, as an operator would; the rule itself: test_destinations)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from raybeam.webhooks import (
    FINAL_STATUSES,
    DeliveryPolicy,
    InvalidWebhookSignature,
    build_payload,
    build_request,
    deliver,
    sign,
    verify_webhook,
)
from tests.support.fake_dns import use_fake_dns

KEY = b"test-signing-key"
FAST = DeliveryPolicy(attempts=3, backoff=0.01, connect_timeout=2.0, read_timeout=2.0)
LOOPBACK = "127.0.0.0/8"


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_dns(monkeypatch)


@pytest.fixture(autouse=True)
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receivers here listen on loopback, which an operator must allow; the tests of
    the rule itself take the allowance away again."""
    monkeypatch.setenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", LOOPBACK)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on loopback that answers a scripted sequence of status codes."""

    url: str
    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def next_status(self) -> int:
        return self.statuses.pop(0) if self.statuses else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = state[0]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec.requests.append(Received(self.path, dict(self.headers.items()), body))
            if rec.hang:
                rec.release.wait(10)
                return
            code = rec.next_status()
            reply = b'{"ok":true}'
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.append(Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook"))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state[0]
    finally:
        state[0].release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def payload() -> dict[str, Any]:
    return build_payload("t-1", "COMPLETE", {"result": 20}, [], None)


def run_deliver(
    url: str, policy: DeliveryPolicy = FAST, body: dict[str, Any] | None = None
) -> tuple[bool, list[dict[str, Any]]]:
    attempts: list[dict[str, Any]] = []
    ok = asyncio.run(deliver(url, body or payload(), KEY, attempts.append, policy))
    return ok, attempts


# --- payload -------------------------------------------------------------------------------


def test_final_statuses() -> None:
    assert {"COMPLETE", "FAILED", "CANCELLED", "TIMEOUT", "EXPIRED"} == FINAL_STATUSES


def test_payload_shape_uses_the_return_value() -> None:
    outputs = [{"name": "sum.txt", "url": "http://x/output/id/1", "expires_in": 3600}]
    assert build_payload("t-1", "COMPLETE", {"result": 20}, outputs, None) == {
        "task_id": "t-1",
        "status": "COMPLETE",
        "data": {"result": 20},
        "outputs": outputs,
        "failure_reason": None,
        "progress": None,
    }


def test_payload_data_falls_back_to_the_first_output_url() -> None:
    outputs = [
        {"name": "a.png", "url": "http://x/output/id/a", "expires_in": 3600},
        {"name": "b.png", "url": "http://x/output/id/b", "expires_in": 3600},
    ]
    assert build_payload("t", "COMPLETE", None, outputs, None)["data"] == {
        "url": "http://x/output/id/a"
    }
    assert build_payload("t", "FAILED", None, [], "boom")["data"] is None
    assert build_payload("t", "FAILED", None, [], "boom")["failure_reason"] == "boom"
    # A falsy return value is still the return value.
    assert build_payload("t", "COMPLETE", 0, outputs, None)["data"] == 0


def test_build_request_headers_and_signature() -> None:
    body, headers = build_request(payload(), KEY, now=1_700_000_000.7)
    assert (
        body
        == b'{"task_id":"t-1","status":"COMPLETE","data":{"result":20},"outputs":[],"failure_reason":null,"progress":null}'
    )
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Task-ID"] == "t-1"
    assert headers["X-Task-Status"] == "COMPLETE"
    assert headers["X-Task-Timestamp"] == "1700000000"
    assert headers["X-Task-Signature"] == sign(KEY, 1_700_000_000, body)
    expected = hmac.new(KEY, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Task-Signature"] == expected


# --- verify_webhook ------------------------------------------------------------------------


def test_verify_accepts_a_fresh_request_with_headers_in_any_case() -> None:
    body, headers = build_request(payload(), KEY)
    assert verify_webhook(body, headers, KEY) == payload()
    assert verify_webhook(body.decode(), {k.lower(): v for k, v in headers.items()}, KEY.decode())
    assert verify_webhook(body, {k.upper(): v for k, v in headers.items()}, KEY)


def test_verify_rejects_a_tampered_body() -> None:
    body, headers = build_request(payload(), KEY)
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        verify_webhook(body.replace(b"20", b"21"), headers, KEY)


def test_verify_rejects_a_wrong_key() -> None:
    body, headers = build_request(payload(), KEY)
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        verify_webhook(body, headers, b"another-key")


def test_verify_rejects_stale_and_future_timestamps() -> None:
    stale_body, stale = build_request(payload(), KEY, now=time.time() - 301)
    with pytest.raises(InvalidWebhookSignature, match="tolerance"):
        verify_webhook(stale_body, stale, KEY)
    future_body, future = build_request(payload(), KEY, now=time.time() + 301)
    with pytest.raises(InvalidWebhookSignature, match="tolerance"):
        verify_webhook(future_body, future, KEY)
    assert verify_webhook(stale_body, stale, KEY, tolerance=3600)["task_id"] == "t-1"


@pytest.mark.parametrize("header", ["X-Task-Signature", "X-Task-Timestamp"])
def test_verify_rejects_missing_headers(header: str) -> None:
    body, headers = build_request(payload(), KEY)
    del headers[header]
    with pytest.raises(InvalidWebhookSignature, match=header):
        verify_webhook(body, headers, KEY)


def test_verify_rejects_a_non_numeric_timestamp_and_a_non_json_body() -> None:
    body, headers = build_request(payload(), KEY)
    with pytest.raises(InvalidWebhookSignature, match="unix seconds"):
        verify_webhook(body, {**headers, "X-Task-Timestamp": "yesterday"}, KEY)
    ts = int(time.time())
    raw = b"not json"
    signed = {"X-Task-Timestamp": str(ts), "X-Task-Signature": sign(KEY, ts, raw)}
    with pytest.raises(InvalidWebhookSignature, match="JSON"):
        verify_webhook(raw, signed, KEY)


# --- deliver -------------------------------------------------------------------------------


def test_delivery_is_signed_and_verifiable(receiver: Receiver) -> None:
    ok, attempts = run_deliver(receiver.url)
    assert ok is True
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.path == "/hook"
    assert request.headers["X-Task-ID"] == "t-1"
    assert request.headers["X-Task-Status"] == "COMPLETE"
    assert verify_webhook(request.body, request.headers, KEY) == payload()
    assert len(attempts) == 1
    assert attempts[0]["status_code"] == 200
    assert attempts[0]["at"].endswith("Z")


def test_retries_5xx_until_success(receiver: Receiver) -> None:
    receiver.statuses = [500, 500, 200]
    ok, attempts = run_deliver(receiver.url)
    assert ok is True
    assert len(receiver.requests) == 3
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    for request in receiver.requests:
        verify_webhook(request.body, request.headers, KEY)


def test_gives_up_after_the_last_attempt(receiver: Receiver) -> None:
    receiver.statuses = [503, 502, 500, 200]
    ok, attempts = run_deliver(receiver.url)
    assert ok is False
    assert len(receiver.requests) == 3
    assert [a["status_code"] for a in attempts] == [503, 502, 500]


def test_400_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400, 200]
    ok, attempts = run_deliver(receiver.url)
    assert ok is False
    assert len(receiver.requests) == 1
    assert attempts == [{"at": attempts[0]["at"], "status_code": 400}]


@pytest.mark.parametrize("code", [408, 425, 429])
def test_try_again_later_codes_are_retried(receiver: Receiver, code: int) -> None:
    receiver.statuses = [code, 200]
    ok, attempts = run_deliver(receiver.url)
    assert ok is True
    assert len(receiver.requests) == 2
    assert [a["status_code"] for a in attempts] == [code, 200]


def test_connection_refused_is_retried_and_never_raises() -> None:
    started = time.monotonic()
    ok, attempts = run_deliver(closed_port_url())
    assert ok is False
    assert len(attempts) == 3
    assert all("error" in a and "status_code" not in a for a in attempts)
    assert all(a["error"] and a["at"].endswith("Z") for a in attempts)
    assert time.monotonic() - started < 5


def test_read_timeout_is_not_retried(receiver: Receiver) -> None:
    receiver.hang = True
    policy = DeliveryPolicy(attempts=3, backoff=0.01, connect_timeout=2.0, read_timeout=0.3)
    started = time.monotonic()
    ok, attempts = run_deliver(receiver.url, policy)
    assert ok is False
    assert len(attempts) == 1
    assert "error" in attempts[0]
    assert len(receiver.requests) == 1
    assert time.monotonic() - started < 3


def test_async_recorder_is_awaited_and_a_failing_recorder_does_not_stop_delivery(
    receiver: Receiver,
) -> None:
    receiver.statuses = [500, 200]
    seen: list[dict[str, Any]] = []

    async def record(attempt: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append(attempt)

    assert asyncio.run(deliver(receiver.url, payload(), KEY, record, FAST)) is True
    assert [a["status_code"] for a in seen] == [500, 200]

    def broken(attempt: dict[str, Any]) -> None:
        raise RuntimeError("registry down")

    receiver.statuses = [500, 200]
    assert asyncio.run(deliver(receiver.url, payload(), KEY, broken, FAST)) is True
    assert len(receiver.requests) == 4


def test_a_given_client_is_used_and_left_open(receiver: Receiver) -> None:
    async def go() -> tuple[bool, bool]:
        async with httpx.AsyncClient() as client:
            ok = await deliver(receiver.url, payload(), KEY, lambda a: None, FAST, client)
            return ok, client.is_closed

    assert asyncio.run(go()) == (True, False)


def test_unserialisable_values_are_stringified(receiver: Receiver) -> None:
    odd = build_payload("t-2", "COMPLETE", {"when": object}, [], None)
    ok, _ = run_deliver(receiver.url, body=odd)
    assert ok is True
    assert json.loads(receiver.requests[0].body)["data"]["when"] == str(object)


def test_a_bad_url_is_recorded_not_raised() -> None:
    ok, attempts = run_deliver("ftp://127.0.0.1/hook")
    assert ok is False
    assert len(attempts) == 1
    assert "error" in attempts[0]


def test_cancellation_propagates(receiver: Receiver) -> None:
    receiver.hang = True

    async def go() -> None:
        task = asyncio.create_task(deliver(receiver.url, payload(), KEY, lambda a: None, FAST))
        while not receiver.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())
