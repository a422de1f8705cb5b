"""A real webhook receiver on loopback and the webhook sender's environment, for the tests
that run webhooks on the session's Ray cluster (test_webhooks_e2e.py, test_webhook_sender.py).

`Receiver.hook(...)` makes a fresh URL whose requests get scripted answers: status codes,
HANG (hold the request, answer nothing), HUGE (200 with a 128 MiB body) or DRIP (a status
line, then a header line every 0.2 s, forever).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import ray

import raybeam
from raybeam.config import REGISTRY_NAMESPACE
from raybeam.sender import SENDER_NAME, WebhookSender

HANG = "hang"
HUGE = "huge"
DRIP = "drip"
LOOPBACK = {"RAYBEAM_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8"}
MiB = 2**20


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    """Webhook receiver: `hook(...)` makes a URL whose requests get the scripted answers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.scripts: dict[str, list[int | str]] = {}
        self.then: dict[str, int | str] = {}
        self.deliveries: dict[str, list[Delivery]] = {}
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        #: bytes of HUGE answers written, in all
        self.written = 0

    def hook(self, *answers: int | str, then: int | str = 200) -> str:
        path = f"/hook/{uuid.uuid4().hex}"
        self.scripts[path], self.then[path] = list(answers), then
        self.deliveries[path] = []
        return self.base + path

    def answer(self, path: str, delivery: Delivery) -> int | str:
        with self.changed:
            self.deliveries.setdefault(path, []).append(delivery)
            self.changed.notify_all()
            script = self.scripts.get(path, [])
            return script.pop(0) if script else self.then.get(path, 404)

    def received(self, url: str) -> list[Delivery]:
        with self.changed:
            return list(self.deliveries[url.removeprefix(self.base)])

    def wait(self, url: str, count: int, within: float = 30) -> list[Delivery]:
        path = url.removeprefix(self.base)
        with self.changed:
            ok = self.changed.wait_for(lambda: len(self.deliveries[path]) >= count, within)
            got = list(self.deliveries[path])
        assert ok, f"{url} received {len(got)} of {count} deliveries within {within} s"
        return got


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A Receiver on a free loopback port, for as long as the block runs."""
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            delivery = Delivery(dict(self.headers.items()), body, time.time())
            answer = box[0].answer(self.path, delivery)
            if answer == HANG:
                box[0].stopping.wait(60)
                return
            try:
                if answer in (HUGE, DRIP):
                    self.long_answer(answer)
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up meanwhile

        def long_answer(self, answer: int | str) -> None:
            self.send_response(200)
            if answer == HUGE:
                self.send_header("Content-Length", str(128 * MiB))
                self.end_headers()
                block = b"x" * MiB
                for _ in range(128):
                    self.wfile.write(block)
                    box[0].written += len(block)
                return
            self.wfile.write(b"X-Drip: 1\r\n")  # the headers never end
            self.wfile.flush()
            while not box[0].stopping.wait(0.2):
                self.wfile.write(b"X-Drip: 1\r\n")
                self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box.append(Receiver(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        box[0].stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def replace_sender(env: dict[str, str]) -> Any:
    """Start the webhook sender afresh with `env` beside the cluster's environment; the
    registry finds it by name at its next delivery."""
    for _ in range(20):
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(SENDER_NAME, namespace=REGISTRY_NAMESPACE), no_restart=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                ray.get_actor(SENDER_NAME, namespace=REGISTRY_NAMESPACE)
            except ValueError:
                break
            time.sleep(0.1)
        try:
            sender = WebhookSender.options(  # type: ignore[attr-defined]
                name=SENDER_NAME,
                namespace=REGISTRY_NAMESPACE,
                lifetime="detached",
                runtime_env={"env_vars": env},
            ).remote()
        except ValueError:  # the registry made one meanwhile: once more
            continue
        ray.get(sender.pid.remote(), timeout=60)
        return sender
    raise AssertionError("could not replace the webhook sender")


@contextlib.contextmanager
def loopback_open_to_webhooks() -> Iterator[None]:
    """Loopback allowed to webhooks here (the check at enqueue) and in a fresh sender (the
    check at delivery), as an operator would set `RAYBEAM_WEBHOOK_ALLOWED_NETWORKS`."""
    saved = os.environ.get("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS")
    os.environ.update(LOOPBACK)
    replace_sender(LOOPBACK)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAYBEAM_WEBHOOK_ALLOWED_NETWORKS", None)
        else:
            os.environ["RAYBEAM_WEBHOOK_ALLOWED_NETWORKS"] = saved


def wait_webhook(
    task: raybeam.Task, done: Callable[[dict[str, Any]], bool], within: float = 30
) -> dict[str, Any]:
    """The task record once `done(record["webhook"])` holds."""
    deadline = time.monotonic() + within
    while True:
        info = task.info()
        if done(info["webhook"]):
            return info
        assert time.monotonic() < deadline, f"webhook of {task.id} never got there: {info}"
        time.sleep(0.1)
