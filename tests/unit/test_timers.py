"""The registry's per-task timers: one heap behind one loop timer."""

from __future__ import annotations

import asyncio

import pytest

from raybeam.host import Timers

pytestmark = pytest.mark.timeout(30)


def test_timers_fire_in_order_and_cancelled_ones_never_do() -> None:
    async def go() -> tuple[list[str], Timers]:
        timers, fired = Timers(), []
        for i, delay in enumerate([0.05, 0.01, 0.03, 0.02]):
            timers.later("ttl", f"t{i}", delay, lambda i=i: fired.append(f"t{i}"))
        timers.later("timeout", "t0", 0.001, lambda: fired.append("t0 timeout"))
        timers.cancel("ttl", "t2")
        timers.later("ttl", "t3", 0.04, lambda: fired.append("t3 again"))  # replaces t3's
        assert timers.has("t0") and timers.has("t0", "timeout") and not timers.has("t2")
        await asyncio.sleep(0.1)
        return fired, timers

    fired, timers = asyncio.run(go())
    assert fired == ["t0 timeout", "t1", "t3 again", "t0"]
    assert timers.handles == {} and timers.heap == []


def test_one_failing_timer_leaves_the_others_and_the_heap_sheds_cancelled_ones() -> None:
    async def go() -> tuple[list[int], Timers]:
        timers, fired = Timers(), []
        timers.later("ttl", "bad", 0.0, lambda: 1 / 0)  # type: ignore[func-returns-value]
        timers.later("ttl", "good", 0.0, lambda: fired.append(1))
        for i in range(5000):
            timers.later("ttl", str(i), 3600, lambda: None)
        for i in range(5000):
            timers.cancel("ttl", str(i)) if i % 2 else timers.cancel_all(str(i))
        await asyncio.sleep(0.02)
        return fired, timers

    fired, timers = asyncio.run(go())
    assert fired == [1]
    assert len(timers.heap) < 2048 and not timers.handles  # not 5,000 marked entries
