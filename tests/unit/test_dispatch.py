"""Dispatch decisions without Ray: packing, the autoscaler request, webhook resumption."""

from __future__ import annotations

from typing import Any

import pytest

from raybeam.containers import ContainerPool, ResourceDemand
from raybeam.dispatch import PACK_BELOW, PACK_MAX, PACK_RUN, max_calls, pack_options, pack_size
from raybeam.middleware.webhooks import Webhooks
from raybeam.wire import Attempt


def test_pack_sizes() -> None:
    cpu = {"num_cpus": 1}
    assert pack_size(None, 1000, 4, cpu) == 1  # task length unknown
    assert pack_size(PACK_BELOW * 2, 1000, 4, cpu) == 1  # not tiny
    assert pack_size(0.0001, 1000, 4, {"num_cpus": 1, "num_gpus": 1}) == 1  # GPU tasks
    assert pack_size(0.0001, 1000, 4, cpu) == PACK_MAX
    assert pack_size(0.001, 1000, 4, cpu) == int(PACK_RUN / 0.001)  # about PACK_RUN seconds
    assert pack_size(0.0001, 8, 4, cpu) == 2  # a small backlog is spread over the CPUs
    assert pack_size(0.0001, 8, 4, {"num_cpus": 0.5}) == 1


def test_a_pack_of_fractional_tasks_asks_for_one_cpu_that_fits_a_node() -> None:
    tenth = {"num_cpus": 0.1, "memory": 100, "resources": {"fast": 1}}
    assert pack_options(tenth, 8) == {**tenth, "num_cpus": 1.0}  # the rest as the tasks ask
    assert pack_options(tenth, 0.5) == {**tenth, "num_cpus": 0.5}  # never beyond a node
    assert pack_options(tenth, 0.1) == tenth
    for whole in ({"num_cpus": 1}, {"num_cpus": 2}, {"num_cpus": 0}, {}):
        assert pack_options(whole, 8) == whole  # whole CPUs, none, or Ray's default of 1


class Host:
    def __init__(self) -> None:
        self.queue_depth = 0

    def depth(self, queue: str) -> int:
        return self.queue_depth

    def task(self, task_id: str) -> None:
        return None


def pool(host: Host, max_containers: int = 4) -> ContainerPool:
    warm = {
        "keep_warm_seconds": 1,
        "workers": 1,
        "autoscaler": {"min_containers": 0, "max_containers": max_containers,
                       "tasks_per_container": 1},
    }  # fmt: skip
    p = ContainerPool(host, "q", warm, watch=None)  # type: ignore[arg-type]
    attempt = Attempt("t", "q", "r", 1, "p", None, 60, "")
    p.waiting.append(type("W", (), {"attempt": attempt})())  # type: ignore[arg-type]
    p.bundle = {"CPU": 2.0, "GPU": 1.0}
    return p


def test_one_request_for_all_pools_that_falls_with_the_demand() -> None:
    sent: list[list[dict[str, float]]] = []
    demand = ResourceDemand(request=sent.append)
    a_host, b_host = Host(), Host()
    a, b = pool(a_host), pool(b_host, max_containers=1)

    def tick() -> None:
        bundles = demand.due([x for p in (a, b) for x in p.demand()])
        if bundles is not None:
            demand.send(bundles)

    tick()
    assert sent == []  # nothing wanted, nothing sent
    a_host.queue_depth, b_host.queue_depth = 3, 5
    tick()
    tick()  # unchanged: not sent again
    assert sent == [[{"CPU": 2.0, "GPU": 1.0}] * 4]
    a_host.queue_depth = 1
    tick()
    assert sent[-1] == [{"CPU": 2.0, "GPU": 1.0}] * 2
    a_host.queue_depth = b_host.queue_depth = 0
    tick()
    assert sent[-1] == []  # lowered to nothing: the cluster may shrink


def test_a_retired_pool_never_grows() -> None:
    host = Host()
    host.queue_depth = 10
    p = pool(host)
    p.retire()
    assert p.wanted() == 1  # one container to serve what waits
    p.waiting.clear()
    assert p.wanted() == 0 and p.demand() == []


def test_gpu_queues_get_a_fresh_process_per_task_unless_they_ask_otherwise() -> None:
    assert max_calls(None, {"num_cpus": 0.25, "num_gpus": 1}) == 1
    assert max_calls(None, {"num_cpus": 1, "num_gpus": 0.5}) == 1
    assert max_calls(0, {"num_gpus": 1}) == 0  # a warm worker, as asked
    assert max_calls(5, {"num_gpus": 1}) == 5
    assert max_calls(None, {"num_cpus": 1}) is None  # CPU tasks: Ray's default, reuse
    assert max_calls(None, {"num_cpus": 1, "num_gpus": 0}) is None


def test_a_failing_request_is_swallowed() -> None:
    def refuse(bundles: Any) -> None:
        raise RuntimeError("no autoscaler")

    ResourceDemand(request=refuse).send([{"CPU": 1.0}])


def test_unfinished_webhooks_resume() -> None:
    hook = Webhooks(host=None)  # type: ignore[arg-type]
    assert hook._unfinished(None)
    one_failed = {"url": "u", "delivered": False, "attempts": [{"status_code": 503}]}
    assert hook._unfinished(one_failed)
    assert not hook._unfinished({**one_failed, "delivered": True})
    spent = {"url": "u", "delivered": False, "attempts": [{"error": "x"}] * 3}
    assert not hook._unfinished(spent)
    assert hook._unfinished({**one_failed, "attempts": []})  # cut short before its answer
    refused = {"error": "ConnectError: [Errno 111] Connection refused"}
    assert hook._unfinished({**one_failed, "attempts": [refused]})
    assert hook._unfinished({**one_failed, "attempts": [{"error": "not sent: no storage"}]})


@pytest.mark.parametrize(
    "attempts",
    [
        [{"error": "ReadTimeout"}],  # the receiver may have acted on it: not tried again
        [{"error": "address not allowed"}],
        [{"error": "timeout: no complete answer within 30 s"}],
        [{"status_code": 404}],
        [{"status_code": 503}, {"error": "RemoteProtocolError: closed"}],
    ],
)
def test_a_delivery_that_ended_is_never_resumed(attempts: list[dict[str, Any]]) -> None:
    """A restart sends only what was cut short: an attempt that ended the delivery (no
    retry after it) leaves nothing to resume, however many attempts remain."""
    hook = Webhooks(host=None)  # type: ignore[arg-type]
    assert not hook._unfinished({"url": "u", "delivered": False, "attempts": attempts})


def test_may_retry_matches_what_the_sender_does() -> None:
    from raybeam.webhooks import may_retry

    assert [may_retry({"status_code": c}) for c in (200, 404, 408, 425, 429, 500, 503)] == [
        False, False, True, True, True, True, True,
    ]  # fmt: skip
    assert may_retry({"error": "ConnectError: refused"}) and may_retry({"error": "ConnectTimeout"})
    assert may_retry({"error": "PoolTimeout"})
    assert not may_retry({"error": "ReadTimeout"}) and not may_retry({"error": "x"})
    assert not may_retry({})


def test_a_task_put_back_ahead_goes_first_within_its_priority() -> None:
    from raybeam.lanes import Lane

    lane = Lane()
    for name, priority in [("a", 0), ("b", 0), ("high", 5)]:
        lane.push(priority, name)
    for name in reversed(["back1", "back2"]):  # as a pack hands back its unrun members
        lane.push(0, name, ahead=True)
    assert lane.pop(10) == ["high", "back1", "back2", "a", "b"]


def test_lanes_start_higher_priority_first_fifo_within_one() -> None:
    from raybeam.lanes import MIN_IN_FLIGHT, SLACK, Lane, capacity

    lane = Lane()
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)]:
        lane.push(priority, name)
    assert lane.pop(2) == ["e", "b"] and lane.pop(10) == ["d", "a", "c"]
    cluster = {"CPU": 4.0, "GPU": 2.0, "memory": 8e9, "accelerator_type:A10G": 1.0}
    assert capacity({"num_cpus": 1}, cluster) == 4
    assert capacity({"num_cpus": 0.25}, cluster) == 16
    assert capacity({"num_cpus": 1, "num_gpus": 1}, cluster) == 2
    assert capacity({"num_cpus": 1, "memory": 3e9}, cluster) == 2
    assert capacity({"num_cpus": 1, "num_gpus": 1, "accelerator_type": "T4"}, cluster) == 1
    assert capacity({"num_cpus": 0}, cluster) > 10**6
    lane.in_flight = 3
    assert lane.room(capacity({"num_cpus": 0.25}, cluster)) == SLACK * 16 - 3
    assert lane.room(1) == MIN_IN_FLIGHT - 3  # demand an autoscaler can see


def test_a_lane_hands_out_what_one_heap_by_priority_then_arrival_would() -> None:
    import heapq
    import itertools
    import random

    from raybeam.lanes import Lane

    rng = random.Random(7)
    for _ in range(100):
        lane, heap, n = Lane(), [], 0
        order, ahead = itertools.count(), itertools.count(-1, -1)
        for _ in range(200):
            if rng.random() < 0.6:
                priority, first = rng.choice([0, 0, 1, 5, -3, 10**30]), rng.random() < 0.2
                lane.push(priority, n, first)
                heapq.heappush(heap, (-priority, next(ahead if first else order), n))
                n += 1
            else:
                k = rng.randint(0, 5)
                assert lane.pop(k) == [heapq.heappop(heap)[2] for _ in range(min(k, len(heap)))]
            assert len(lane) == len(heap)


def test_a_pack_returns_outcomes_as_values_that_make_the_same_outcomes() -> None:
    from raybeam.wire import OUTCOME_KEYS, Outcome, failed, outcome_from, outcome_values, succeeded

    assert set(OUTCOME_KEYS) == set(Outcome.__annotations__)
    for outcome in (succeeded({"x": [1]}, [{"id": "o"}]), failed("boom", True)):
        values = outcome_values(outcome)
        assert isinstance(values, list) and len(values) == len(OUTCOME_KEYS)
        assert outcome_from(values) == outcome
    with pytest.raises(ValueError):  # a list of another length is refused, not misread
        outcome_from(values[:-1])
