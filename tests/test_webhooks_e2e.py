"""Webhooks from the registry on the session's Ray cluster to a real receiver (SPEC §3, §4, §10).

The receiver is a ThreadingHTTPServer on loopback (tests/support/webhook_receiver.py). Each
test takes fresh paths on it, each with its own scripted answers, so late deliveries never mix between tests. Delivery runs with
the registry's default policy: 3 attempts, backoff 1 s then 2 s, read timeout 10 s, made by
the webhook sender actor. Loopback is open to webhooks here, as an operator would open it
(`RAYBEAM_WEBHOOK_ALLOWED_NETWORKS`): in this process, for the check at enqueue, and in the
sender's environment, for the check at delivery (the sender's own tests, in
test_webhook_sender.py, start it with others).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qs

import pytest

import raybeam
from raybeam import (
    InvalidWebhookSignature,
    Output,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskStatus,
    TaskTimeout,
    task_queue,
    verify_webhook,
)
from raybeam.storage import Storage
from tests.support.registry import restart_registry
from tests.support.webhook_receiver import (
    HANG,
    Delivery,
    Receiver,
    loopback_open_to_webhooks,
    running_receiver,
    wait_webhook,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]

PAYLOAD_KEYS = {"task_id", "status", "data", "outputs", "failure_reason", "progress"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module", autouse=True)
def loopback_webhooks(ray_cluster: Any) -> Iterator[None]:
    with loopback_open_to_webhooks():
        yield


@pytest.fixture(scope="module")
def key(ray_cluster: Any) -> bytes:
    """The registry's signing key: generated and persisted in the session's storage."""
    return Storage(ray_cluster.storage).webhook_key()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def delivered(webhook: dict[str, Any]) -> bool:
    return bool(webhook["delivered"])


def check_signed(delivery: Delivery, key: bytes, task: raybeam.Task, status: str) -> dict[str, Any]:
    payload = verify_webhook(delivery.body, delivery.headers, key)
    assert set(payload) == PAYLOAD_KEYS
    assert payload["task_id"] == delivery.headers["X-Task-ID"] == task.id
    assert payload["status"] == delivery.headers["X-Task-Status"] == status
    assert delivery.headers["Content-Type"] == "application/json"
    assert abs(int(delivery.headers["X-Task-Timestamp"]) - delivery.at) <= 5
    assert len(delivery.headers["X-Task-Signature"]) == 64
    return payload


def test_one_signed_delivery_per_final_status(
    receiver: Receiver, key: bytes, ray_cluster: Any, unique_name: str
) -> None:
    default, override = receiver.hook(), receiver.hook()

    @task_queue(name=unique_name, cpu=0.25, callback_url=default)
    def double(x: int) -> dict[str, int]:
        return {"doubled": 2 * x}

    @task_queue(name=unique_name + "_fail", cpu=0.25, retries=0)
    def fail() -> None:
        raise ValueError("boom")

    @task_queue(name=unique_name + "_slow", cpu=0.25, timeout=1, retries=0)
    def slow() -> None:
        time.sleep(30)

    @task_queue(name=unique_name + "_h100", gpu="H100")
    def never() -> None: ...

    @task_queue(name=unique_name + "_file", cpu=0.25)
    def saves() -> None:
        Output.from_bytes("result.txt", b"42").save()

    urls = {s: receiver.hook() for s in ("FAILED", "TIMEOUT", "CANCELLED", "EXPIRED", "FILE")}
    tasks = {
        "COMPLETE": double.put(x=1),
        "FAILED": fail.options(callback_url=urls["FAILED"]).put(),
        "TIMEOUT": slow.options(callback_url=urls["TIMEOUT"]).put(),
        "CANCELLED": never.options(callback_url=urls["CANCELLED"]).put(),
        "EXPIRED": never.options(callback_url=urls["EXPIRED"], ttl=1).put(),
        "FILE": saves.options(callback_url=urls["FILE"]).put(),
    }
    overridden = double.options(callback_url=override).put(x=2)
    urls.update(COMPLETE=default)
    tasks["CANCELLED"].cancel()
    assert tasks["COMPLETE"].result(timeout=60) == {"doubled": 2}
    assert overridden.result(timeout=60) == {"doubled": 4}
    assert tasks["FILE"].result(timeout=60) is None
    for name, error in [
        ("FAILED", TaskFailed),
        ("TIMEOUT", TaskTimeout),
        ("CANCELLED", TaskCancelled),
        ("EXPIRED", TaskExpired),
    ]:
        with pytest.raises(error):
            tasks[name].result(timeout=30)

    payloads = {}
    for name, task in tasks.items():
        status = "COMPLETE" if name == "FILE" else name
        (delivery,) = receiver.wait(urls[name], 1)
        payloads[name] = payload = check_signed(delivery, key, task, status)
        info = wait_webhook(task, delivered)
        assert info["status"] == status
        assert payload["failure_reason"] == info["failure_reason"]
        # the final status was stored before the webhook went out
        assert unix(info["ended_at"]) <= delivery.at
        webhook = info["webhook"]
        assert set(webhook) == {"url", "delivered", "attempts"}
        assert webhook["url"] == urls[name]
        (attempt,) = webhook["attempts"]
        assert set(attempt) == {"at", "status_code"} and attempt["status_code"] == 200
        assert attempt["at"].endswith("Z") and unix(attempt["at"]) >= unix(info["ended_at"])

    assert payloads["COMPLETE"]["data"] == {"doubled": 2}
    assert payloads["COMPLETE"]["outputs"] == []
    assert payloads["COMPLETE"]["failure_reason"] is None
    assert payloads["FAILED"]["data"] is None
    assert "ValueError: boom" in payloads["FAILED"]["failure_reason"]
    assert "timeout of 1 s" in payloads["TIMEOUT"]["failure_reason"]
    assert payloads["CANCELLED"]["failure_reason"] == "cancelled"
    assert "ttl of 1 s" in payloads["EXPIRED"]["failure_reason"]
    # a task that returned nothing but saved an output: data is the first output's link
    (output,) = payloads["FILE"]["outputs"]
    assert output["name"] == "result.txt" and output["expires_in"] == 3600
    assert payloads["FILE"]["data"] == {"url": output["url"]}
    output_id, query = output["url"].split("/output/id/")[1].split("?")
    fields = parse_qs(query)
    expires, signature = fields["expires"][0], fields["signature"][0]
    assert Storage(ray_cluster.storage).verify_local_link(output_id, expires, signature)

    # the per-call callback_url replaced the queue's: one delivery each, nothing repeated
    check_signed(receiver.wait(override, 1)[0], key, overridden, "COMPLETE")
    time.sleep(0.5)
    assert {len(receiver.received(u)) for u in [*urls.values(), override]} == {1}


def test_verify_webhook_rejects_tampering(receiver: Receiver, key: bytes, unique_name: str) -> None:
    url = receiver.hook()

    @task_queue(name=unique_name, cpu=0.25, callback_url=url)
    def value() -> int:
        return 7

    task = value.put()
    (delivery,) = receiver.wait(url, 1)
    body, headers = delivery.body, delivery.headers
    assert verify_webhook(body, headers, key)["data"] == 7
    assert verify_webhook(body.decode(), {k.lower(): v for k, v in headers.items()}, key.decode())
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        verify_webhook(body.replace(b'"data":7', b'"data":8'), headers, key)
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        verify_webhook(body, headers, key + b"x")
    later = {**headers, "X-Task-Timestamp": str(int(headers["X-Task-Timestamp"]) + 1)}
    with pytest.raises(InvalidWebhookSignature, match="does not match"):
        verify_webhook(body, later, key)
    with pytest.raises(InvalidWebhookSignature, match="missing"):
        verify_webhook(body, {k: v for k, v in headers.items() if k != "X-Task-Signature"}, key)
    assert task.status() is TaskStatus.COMPLETE


def test_500_500_200_is_three_deliveries_recorded_on_the_task(
    receiver: Receiver, key: bytes, unique_name: str
) -> None:
    url = receiver.hook(500, 500)

    @task_queue(name=unique_name, cpu=0.25, callback_url=url)
    def one() -> int:
        return 1

    task = one.put()
    assert task.result(timeout=60) == 1
    deliveries = receiver.wait(url, 3, within=20)
    for delivery in deliveries:
        check_signed(delivery, key, task, "COMPLETE")
    assert len({d.body for d in deliveries}) == 1
    # backoff: 1 s, then 2 s
    gaps = [b.at - a.at for a, b in pairwise(deliveries)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
    info = wait_webhook(task, delivered)
    assert [a["status_code"] for a in info["webhook"]["attempts"]] == [500, 500, 200]
    assert info["status"] == "COMPLETE"
    time.sleep(0.5)
    assert len(receiver.received(url)) == 3


def test_dead_and_hanging_receivers_do_not_slow_other_tasks(
    receiver: Receiver, unique_name: str
) -> None:
    @task_queue(name=unique_name, cpu=0.25)
    def quick(i: int) -> int:
        return i

    def batch() -> float:
        start = time.monotonic()
        tasks = quick.map(list(range(8)))
        raybeam.wait(tasks, timeout=60)
        assert [t.result() for t in tasks] == list(range(8))
        return time.monotonic() - start

    batch()  # workers started
    baseline = batch()

    @task_queue(name=unique_name + "_bad", cpu=0.25)
    def bad(i: int) -> int:
        return i

    hang_url, dead_url = receiver.hook(then=HANG), closed_port_url()
    hanging = bad.options(callback_url=hang_url).map([0, 1, 2])
    dead = bad.options(callback_url=dead_url).map([3, 4, 5])
    raybeam.wait(hanging + dead, timeout=60)
    receiver.wait(hang_url, 3)
    for task in hanging:  # final and readable while its webhook is held by the receiver
        info = task.info()
        assert info["status"] == "COMPLETE"
        assert info["webhook"] == {"url": hang_url, "delivered": False, "attempts": []}
    # A delivery that held the registry's loop would hold it for the 10 s read timeout.
    slowed = batch()
    assert slowed < baseline + 5.0, (baseline, slowed)

    # no retry after a read timeout (the receiver may have acted on it)
    for task in hanging:
        info = wait_webhook(task, lambda w: bool(w["attempts"]), within=30)
        (attempt,) = info["webhook"]["attempts"]
        assert "ReadTimeout" in attempt["error"]
        assert info["webhook"]["delivered"] is False
        assert info["status"] == "COMPLETE"
    for task in dead:  # connection refused: retried, 3 attempts in all
        info = wait_webhook(task, lambda w: len(w["attempts"]) == 3, within=30)
        assert all("ConnectError" in a["error"] for a in info["webhook"]["attempts"])
        assert info["webhook"]["delivered"] is False
        assert info["status"] == "COMPLETE"
    assert len(receiver.received(hang_url)) == 3


def test_a_webhook_cut_short_by_a_registry_restart_is_sent_again(
    receiver: Receiver, key: bytes, unique_name: str
) -> None:
    url, ended_url = receiver.hook(HANG), receiver.hook(404)

    @task_queue(name=unique_name, cpu=0.25, callback_url=url)
    def done() -> str:
        return "done"

    # a delivery that ended before the restart (404: not tried again) is not sent again
    ended = done.options(callback_url=ended_url).put()
    assert ended.result(timeout=60) == "done"
    wait_webhook(ended, lambda w: bool(w["attempts"]))
    task = done.put()
    assert task.result(timeout=60) == "done"
    receiver.wait(url, 1)  # in flight, nothing recorded yet
    restart_registry()  # the next registry loads the state and boots
    try:
        second = receiver.wait(url, 2)[1]
    except AssertionError as exc:  # what the restarted registry holds, for the reader
        raise AssertionError(f"{exc}; the task as stored now: {task.info()}") from None
    check_signed(second, key, task, "COMPLETE")
    info = wait_webhook(task, delivered)
    assert [a["status_code"] for a in info["webhook"]["attempts"]] == [200]
    time.sleep(1.0)
    assert len(receiver.received(ended_url)) == 1
    assert [a["status_code"] for a in ended.info()["webhook"]["attempts"]] == [404]
