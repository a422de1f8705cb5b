"""SPEC §10 on the real stack: Ray Serve on the session's Ray, raw sockets for slow clients.

Auth before any body, body caps and a body deadline on every route, slow bodies and event
streams that never starve the other routes, a cap on streams per replica, and callback URLs
refused at enqueue. The replicas run with `RAYBEAM_BODY_TIMEOUT=3` and
`RAYBEAM_MAX_STREAMS=210`, and no network open to webhooks.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import raybeam
from raybeam import task_queue
from tests.support.serving import remove_app

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

TOKEN = "hardening-token"
SUFFIX = uuid.uuid4().hex[:6]
BODY_TIMEOUT = 3
MAX_STREAMS = 210
#: what "still answers" means (SPEC §10)
PROMPT = 1.0
ENV = {
    "RAYBEAM_AUTH_TOKENS": TOKEN,
    "RAYBEAM_BODY_TIMEOUT": str(BODY_TIMEOUT),
    "RAYBEAM_MAX_STREAMS": str(MAX_STREAMS),
}


@task_queue(name=f"hard_stuck_{SUFFIX}", cpu=64, max_pending_tasks=20)  # never starts
def stuck(x: int = 0) -> int:
    return x


# Never cancelled: were a refused callback_url ever taken, its task would stay PENDING for
# longer than the session lasts, so no webhook could leave for that address.
@task_queue(name=f"hard_refused_{SUFFIX}", cpu=64, ttl=86400, max_pending_tasks=20)
def refused(x: int = 0) -> int:
    return x


@dataclass
class Api:
    url: str
    port: int
    client: httpx.Client


@pytest.fixture(scope="module")
def api(ray_cluster: Any, serve_port: int) -> Iterator[Api]:
    from serve_app.deployment import deploy

    saved = {name: os.environ.get(name) for name in [*ENV, "RAYBEAM_WEBHOOK_ALLOWED_NETWORKS"]}
    os.environ.update(ENV)
    os.environ.pop("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", None)
    try:
        stuck.register()
        refused.register()
        port = serve_port
        url = deploy("127.0.0.1", port)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            yield Api(url, port, client)
            ids = [t.id for t in raybeam.list_tasks(queue=stuck.name)]
            if ids:
                client.request("DELETE", "/v2/task/cancel/", json={"task_ids": ids})
        remove_app()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def assert_error(answer: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"error", "detail"} and body["error"] == error
    return body


def assert_prompt(api: Api, task_id: str | None = None) -> float:
    """Other routes answer within PROMPT seconds; returns the slowest time."""
    slowest = 0.0
    paths = ["/healthz", "/v2/task/?limit=1"] + ([f"/v2/task/{task_id}/"] if task_id else [])
    for _ in range(3):
        for path in paths:
            started = time.monotonic()
            answer = api.client.get(path, timeout=PROMPT * 5)
            took = time.monotonic() - started
            assert answer.status_code == 200, (path, answer.text)
            assert took < PROMPT, (path, took)
            slowest = max(slowest, took)
    return slowest


# ---- slow bodies on raw sockets ------------------------------------------------------------


@dataclass
class SlowClient:
    head: bytes
    answer: bytes = b""
    answered_at: float | None = None
    closed: bool = False


@dataclass
class SlowBodies:
    """`count` connections that announce a large body and send it a byte every half second,
    each on its own socket, driven by one event loop in a thread."""

    port: int
    head: bytes
    count: int
    clients: list[SlowClient] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0

    def __enter__(self) -> SlowBodies:
        self.clients = [SlowClient(self.head) for _ in range(self.count)]
        self.started = time.monotonic()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    async def _run(self) -> None:
        await asyncio.gather(*(self._one(c) for c in self.clients))

    async def _one(self, client: SlowClient) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def read() -> None:
            while chunk := await reader.read(65536):
                if client.answered_at is None:
                    client.answered_at = time.monotonic()
                client.answer += chunk
            client.closed = True

        reading = asyncio.create_task(read())
        try:
            writer.write(client.head)
            await writer.drain()
            while not self.stop.is_set() and not client.closed:
                await asyncio.sleep(0.5)
                writer.write(b" ")
                await writer.drain()
        except OSError:
            pass  # the server hung up on us, as it should
        finally:
            reading.cancel()
            writer.close()

    def answered(self, within: float) -> list[SlowClient]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(c.answered_at is not None for c in self.clients):
                break
            time.sleep(0.1)
        return [c for c in self.clients if c.answered_at is not None]


def cancel_head(port: int, size: int, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"DELETE /v2/task/cancel/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()


def status_and_body(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_anonymous_slow_bodies_are_refused_before_their_body_and_block_nothing(api: Api) -> None:
    with SlowBodies(api.port, cancel_head(api.port, 900_000, None), 64) as slow:
        time.sleep(1.0)
        assert_prompt(api)
        answered = slow.answered(within=5)
        assert len(answered) == 64
        for client in answered:
            assert client.answered_at is not None
            assert client.answered_at - slow.started < 5  # long before the body could arrive
            status, body = status_and_body(client.answer)
            assert status == 401 and body["error"] == "Unauthorized"


def test_slow_bodies_of_token_holders_starve_nothing_and_end_in_408(api: Api) -> None:
    with SlowBodies(api.port, cancel_head(api.port, 500_000, TOKEN), 100) as slow:
        time.sleep(1.0)
        assert_prompt(api)
        answered = slow.answered(within=BODY_TIMEOUT + 10)
        assert len(answered) == 100
        for client in answered:
            assert client.answered_at is not None
            assert BODY_TIMEOUT - 0.5 < client.answered_at - slow.started < BODY_TIMEOUT + 10
            status, body = status_and_body(client.answer)
            assert status == 408 and body["error"] == "RequestTimeout"
            assert "RAYBEAM_BODY_TIMEOUT" in body["detail"]


def test_every_route_caps_its_body(api: Api) -> None:
    over = b" " * (2**20 + 1)
    answer = api.client.request("DELETE", "/v2/task/cancel/", content=over)
    assert_error(answer, 413, "PayloadTooLarge")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(3):
            yield b" " * 2**19

    assert_error(
        api.client.request("DELETE", "/v2/task/cancel/", content=chunks()), 413, "PayloadTooLarge"
    )
    assert_error(
        api.client.request("GET", "/v2/task/?limit=1", content=over), 413, "PayloadTooLarge"
    )
    assert_error(api.client.request("GET", "/metrics", content=over), 413, "PayloadTooLarge")
    # a token is checked first: an anonymous client learns nothing from a big body
    anonymous = httpx.request("DELETE", f"{api.url}/v2/task/cancel/", content=over, timeout=10)
    assert_error(anonymous, 401, "Unauthorized")
    # enqueue takes 16 MiB, so 1 MiB and a bit is fine there (a bad body, not a big one)
    answer = api.client.post(f"/taskqueue/{stuck.name}", content=b"[" + over)
    assert_error(answer, 400, "InvalidBody")


# ---- event streams -------------------------------------------------------------------------


class Streams:
    """Event streams on one task, held open by an event loop in a thread."""

    def __init__(self, api: Api, task_id: str) -> None:
        self.api = api
        self.task_id = task_id
        self.opened = 0
        self.refusals: list[httpx.Response] = []
        #: what the streams that ended early said last
        self.ended: list[list[str]] = []
        self.loop = asyncio.new_event_loop()
        self.close = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = httpx.AsyncClient(
            base_url=api.url,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
            limits=httpx.Limits(max_connections=400, max_keepalive_connections=0),
        )

    def open(self, count: int, within: float = 90) -> None:
        target = self.opened + count
        for _ in range(count):
            asyncio.run_coroutine_threadsafe(self._hold(), self.loop)
        deadline = time.monotonic() + within
        while self.opened < target and not self.refusals:
            assert time.monotonic() < deadline, f"{self.opened} of {target} streams opened"
            time.sleep(0.1)

    async def _hold(self) -> None:
        path = f"/v2/task/{self.task_id}/subscribe"
        async with self.client.stream("GET", path) as answer:
            if answer.status_code != 200:
                await answer.aread()
                self.refusals.append(answer)
                return
            lines = answer.aiter_lines()
            async for line in lines:
                if line.startswith("event: status"):
                    self.opened += 1
                    break
            ending = asyncio.ensure_future(self.close.wait())
            reading = asyncio.ensure_future(self._drain(lines))
            await asyncio.wait([ending, reading], return_when=asyncio.FIRST_COMPLETED)
            if reading.done() and not ending.done():
                self.ended.append(reading.result())
            ending.cancel()
            reading.cancel()

    @staticmethod
    async def _drain(lines: Any) -> list[str]:
        seen = []
        async for line in lines:
            seen.append(line)
        return seen

    def shut(self) -> None:
        self.loop.call_soon_threadsafe(self.close.set)
        asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_200_streams_starve_nothing_and_one_past_the_cap_gets_503(api: Api) -> None:
    task_id = api.client.post(f"/taskqueue/{stuck.name}", json={}).json()["task_id"]
    streams = Streams(api, task_id)
    try:
        streams.open(200)
        assert streams.refusals == []
        assert_prompt(api, task_id)
        streams.open(MAX_STREAMS - 200)
        assert streams.opened == MAX_STREAMS and streams.refusals == []
        streams.open(1, within=30)
        assert streams.ended == []
        (refused,) = streams.refusals
        assert_error(refused, 503, "TooManyStreams")
        assert int(refused.headers["Retry-After"]) > 0
        assert_prompt(api, task_id)
    finally:
        streams.shut()
    # the slots come back once the streams end
    time.sleep(1.0)
    with api.client.stream("GET", f"/v2/task/{task_id}/subscribe") as answer:
        assert answer.status_code == 200


# ---- callback URLs at enqueue --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://0.0.0.0:9/hook",
        "ftp://example.com/hook",
    ],
)
def test_a_callback_url_webhooks_may_not_reach_is_400(api: Api, url: str) -> None:
    answer = api.client.post(f"/taskqueue/{refused.name}", json={"args": [1], "callback_url": url})
    assert_error(answer, 400, "InvalidCallbackUrl")
    assert raybeam.list_tasks(queue=refused.name) == []
