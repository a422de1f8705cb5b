"""Bounded webhook delivery (SPEC §10) against raw receivers on loopback, without Ray: the
address rule at connect time, no redirects, a 64 KiB answer cap with no decompression, a total
deadline per attempt, and a per-destination limit. Host names resolve through a fake resolver.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from raybeam.webhooks import (
    DeliveryPolicy,
    DestinationLimits,
    build_payload,
    deliver,
    validate_callback_url,
)
from tests.support.fake_dns import use_fake_dns

KEY = b"test-webhook-key"
ONE = DeliveryPolicy(attempts=1, backoff=0.01, connect_timeout=2.0, read_timeout=5.0)
MiB = 2**20


class RawReceiver:
    """A TCP server on loopback; `answer(conn, head)` writes whatever answer a test needs."""

    def __init__(self, answer: Callable[[socket.socket, bytes], None]) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.open = 0
        self.most_open = 0
        self.written = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"http://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(h.split(b":")[1])
                    for h in head.split(b"\r\n")
                    if h.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(rest) < length:
                rest += conn.recv(65536)
            with self.lock:
                self.heads.append(head)
            self.answer(conn, head)
        except OSError:
            pass  # the sender hung up: what these tests expect of it
        finally:
            with self.lock:
                self.open -= 1
            conn.close()

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self.lock:
            self.written += len(data)

    def close(self) -> None:
        self.release.set()
        self.server.close()


@pytest.fixture
def receivers() -> Iterator[Callable[[Callable[[socket.socket, bytes], None]], RawReceiver]]:
    made: list[RawReceiver] = []

    def make(answer: Callable[[socket.socket, bytes], None]) -> RawReceiver:
        made.append(RawReceiver(answer))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_dns(monkeypatch)
    monkeypatch.setenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")


def ok(conn: socket.socket, head: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def payload() -> dict[str, Any]:
    return build_payload("t-1", "COMPLETE", {"result": 1}, [], None)


def run(url: str, policy: DeliveryPolicy = ONE, **kwargs: Any) -> tuple[bool, list[dict[str, Any]]]:
    attempts: list[dict[str, Any]] = []
    delivered = asyncio.run(deliver(url, payload(), KEY, attempts.append, policy, **kwargs))
    return delivered, attempts


# ---- the address rule at delivery --------------------------------------------------------


def test_a_loopback_receiver_gets_nothing_unless_loopback_is_allowed(
    receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = receivers(ok)
    monkeypatch.delenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS")
    for url in (receiver.url(), receiver.url("localhost"), receiver.url("[::ffff:127.0.0.1]")):
        delivered, attempts = run(url, DeliveryPolicy(attempts=3, backoff=0.01))
        assert delivered is False
        assert [a["error"] for a in attempts] == ["address not allowed"]  # not retried
    assert receiver.heads == [] and receiver.most_open == 0
    monkeypatch.setenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8")
    assert run(receiver.url())[0] is True


def test_a_name_rebound_to_loopback_after_the_check_is_refused(
    receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = receivers(ok)
    monkeypatch.delenv("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS")
    url = receiver.url("rebind.example")
    assert validate_callback_url(url) == url  # public when checked at enqueue
    delivered, attempts = run(url)
    assert delivered is False
    assert attempts[0]["error"] == "address not allowed"
    assert receiver.most_open == 0


def test_the_checked_address_is_connected_to_under_the_urls_name(receivers: Any) -> None:
    receiver = receivers(ok)
    delivered, attempts = run(receiver.url("hooks.example"))
    assert delivered is True and attempts[0]["status_code"] == 200
    (head,) = receiver.heads
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /hook HTTP/1.1"
    assert f"Host: hooks.example:{receiver.port}" in lines
    assert "Accept-Encoding: identity" in lines


def test_redirects_are_not_followed(receivers: Any) -> None:
    def redirect(conn: socket.socket, head: bytes) -> None:
        target = f"http://127.0.0.1:{receiver.port}/elsewhere"
        conn.sendall(
            f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )

    receiver = receivers(redirect)
    delivered, attempts = run(receiver.url(), DeliveryPolicy(attempts=3, backoff=0.01))
    assert delivered is False
    assert [a["status_code"] for a in attempts] == [307]
    assert [h.split(b"\r\n")[0] for h in receiver.heads] == [b"POST /hook HTTP/1.1"]


# ---- bounded answers ----------------------------------------------------------------------


def test_a_128_mib_answer_is_cut_off_after_64_kib(receivers: Any) -> None:
    block = b"x" * MiB

    def huge(conn: socket.socket, head: bytes) -> None:
        receiver.send(conn, f"HTTP/1.1 200 OK\r\nContent-Length: {128 * MiB}\r\n\r\n".encode())
        for _ in range(128):
            receiver.send(conn, block)

    receiver = receivers(huge)
    tracemalloc.start()
    try:
        started = time.monotonic()
        delivered, attempts = run(receiver.url())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert delivered is True
    assert attempts[0]["status_code"] == 200
    assert time.monotonic() - started < 5
    assert peak < 4 * MiB, peak
    time.sleep(0.2)
    assert receiver.written < 32 * MiB  # what the socket buffers took before the hang-up


def test_a_gzip_bomb_is_never_decompressed(receivers: Any) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    zeros = bytes(MiB)
    bomb = b"".join(packer.compress(zeros) for _ in range(256)) + packer.flush()
    assert len(bomb) < MiB  # 256 MiB once inflated

    def gzipped(conn: socket.socket, head: bytes) -> None:
        receiver.send(
            conn,
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(bomb)}\r\n\r\n".encode()
            + bomb,
        )

    receiver = receivers(gzipped)
    tracemalloc.start()
    try:
        delivered, attempts = run(receiver.url())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert delivered is True and attempts[0]["status_code"] == 200
    assert peak < 4 * MiB, peak


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_dripping_receiver_is_cut_at_the_total_deadline(
    receivers: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def drip(conn: socket.socket, head: bytes) -> None:
        if where == "headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            line = b"X-Drip: 1\r\n"
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            line = b"x"
        while not receiver.release.wait(0.2):  # each byte well within the read timeout
            conn.sendall(line)

    receiver = receivers(drip)
    monkeypatch.setenv("RAYBEAM_WEBHOOK_TIMEOUT", "1.5")
    started = time.monotonic()
    delivered, attempts = run(receiver.url(), DeliveryPolicy(attempts=3, read_timeout=10.0))
    elapsed = time.monotonic() - started
    assert delivered is False
    ((attempt),) = attempts  # not retried: the receiver may have acted on it
    assert attempt["error"] == "timeout: no complete answer within 1.5 s"
    assert 1.4 < elapsed < 4, elapsed


# ---- one destination cannot hold the pool ------------------------------------------------


def test_one_slow_destination_holds_only_its_own_slots(receivers: Any) -> None:
    def hang(conn: socket.socket, head: bytes) -> None:
        receiver.release.wait(30)

    receiver = receivers(hang)
    fast = receivers(ok)
    policy = DeliveryPolicy(attempts=1, read_timeout=30.0, total_timeout=30.0)

    async def scenario() -> tuple[float, int]:
        # a pool of 10 connections in all, 8 of them at most for one destination
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
            slots = DestinationLimits(per_destination=8)
            slow = [
                asyncio.create_task(
                    deliver(receiver.url(), payload(), KEY, lambda a: None, policy, client, slots)
                )
                for _ in range(30)
            ]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            ok = await deliver(fast.url(), payload(), KEY, lambda a: None, policy, client, slots)
            took = time.monotonic() - started
            assert ok
            most = receiver.most_open
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
            return took, most

    took, most = asyncio.run(scenario())
    assert took < 1.0, took
    assert most == 8
