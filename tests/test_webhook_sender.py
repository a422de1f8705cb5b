"""The webhook sender on the session's Ray cluster (SPEC §10): deliveries leave the registry's
process, the callback rule is applied again where they are made, an answer is read no further
than 64 KiB, and an attempt ends at `RAYBEAM_WEBHOOK_TIMEOUT`, however the receiver drips.
The receiver is real and on loopback (tests/support/webhook_receiver.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
import ray

from raybeam import task_queue
from raybeam.config import REGISTRY_NAMESPACE
from raybeam.sender import SENDER_NAME
from tests.support.webhook_receiver import (
    DRIP,
    HANG,
    HUGE,
    LOOPBACK,
    MiB,
    Receiver,
    loopback_open_to_webhooks,
    replace_sender,
    running_receiver,
    wait_webhook,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def loopback_webhooks(ray_cluster: Any) -> Iterator[None]:
    with loopback_open_to_webhooks():
        yield


@pytest.fixture
def sender() -> Iterator[Callable[[dict[str, str]], Any]]:
    """Start a sender with another environment for one test; the usual one comes back."""
    yield replace_sender
    replace_sender(LOOPBACK)


def pid_of(actor_class: str) -> int:
    """The process of this session's live actor of `actor_class` (Ray names it in the title)."""
    (pid,) = [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and " ".join(p.cmdline()).startswith(f"ray::{actor_class}")
    ]
    return pid


def connected_to(pid: int, port: int) -> bool:
    return any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections("tcp"))


def test_deliveries_are_made_by_the_sender_actor_not_the_registry(
    receiver: Receiver, unique_name: str
) -> None:
    url = receiver.hook(HANG)

    @task_queue(name=unique_name, cpu=0.25, callback_url=url)
    def one() -> int:
        return 1

    one.put()
    receiver.wait(url, 1)  # held open by the receiver now
    port = int(url.split(":")[2].split("/")[0])
    sender_pid = int(ray.get(ray.get_actor(SENDER_NAME, namespace=REGISTRY_NAMESPACE).pid.remote()))
    assert sender_pid == pid_of("WebhookSender")
    assert connected_to(sender_pid, port)
    assert not connected_to(pid_of("Registry"), port)


def test_a_destination_refused_at_delivery_receives_nothing(
    receiver: Receiver, sender: Callable[[dict[str, str]], Any], unique_name: str
) -> None:
    # allowed where the task is enqueued, not where it is delivered from
    sender({"RAYBEAM_WEBHOOK_ALLOWED_NETWORKS": ""})
    url = receiver.hook()

    @task_queue(name=unique_name, cpu=0.25, callback_url=url)
    def one() -> int:
        return 1

    task = one.put()
    assert task.result(timeout=60) == 1
    info = wait_webhook(task, lambda w: bool(w["attempts"]))
    (attempt,) = info["webhook"]["attempts"]  # not retried
    assert attempt["error"] == "address not allowed"
    assert info["webhook"]["delivered"] is False
    assert info["status"] == "COMPLETE"
    time.sleep(1.0)
    assert receiver.received(url) == []


def test_a_128_mib_answer_is_cut_off_and_the_sender_stays_flat(
    receiver: Receiver, unique_name: str
) -> None:
    url = receiver.hook(HUGE)
    sender_pid = int(ray.get(ray.get_actor(SENDER_NAME, namespace=REGISTRY_NAMESPACE).pid.remote()))
    process = psutil.Process(sender_pid)

    @task_queue(name=unique_name, cpu=0.25, callback_url=url)
    def one() -> int:
        return 1

    before = process.memory_info().rss
    task = one.put()
    peak = before
    deadline = time.monotonic() + 60
    while not (task.status().is_final and task.info()["webhook"]["attempts"]):
        assert time.monotonic() < deadline
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.01)
    (attempt,) = task.info()["webhook"]["attempts"]
    assert attempt["status_code"] == 200
    print(
        f"\nsender RSS while a 128 MiB answer arrives: {before / MiB:.1f} MiB before, "
        f"{peak / MiB:.1f} MiB at most (+{(peak - before) / MiB:.1f} MiB); the receiver "
        f"wrote {receiver.written / MiB:.1f} MiB before the sender hung up"
    )
    assert peak - before < 16 * MiB
    assert receiver.written < 64 * MiB


def test_a_dripping_receiver_is_cut_at_the_webhook_timeout(
    receiver: Receiver, sender: Callable[[dict[str, str]], Any], unique_name: str
) -> None:
    sender({**LOOPBACK, "RAYBEAM_WEBHOOK_TIMEOUT": "2"})
    url = receiver.hook(DRIP)

    @task_queue(name=unique_name, cpu=0.25, callback_url=url)
    def one() -> int:
        return 1

    task = one.put()
    receiver.wait(url, 1)
    started = time.monotonic()
    info = wait_webhook(task, lambda w: bool(w["attempts"]), within=30)
    assert time.monotonic() - started < 8
    (attempt,) = info["webhook"]["attempts"]  # not retried: the receiver may have acted on it
    assert attempt["error"] == "timeout: no complete answer within 2 s"
    assert info["webhook"]["delivered"] is False
