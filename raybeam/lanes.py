"""Lanes: where a plain queue's waiting tasks wait, highest priority first.

raybeam, not Ray, decides what starts when resources free up: each lane (a queue's tasks of
one shape of Ray options) keeps its waiting tasks in a line per priority (higher first),
each in order of arrival (FIFO), and hands Ray only about twice as many as the cluster can
run at once. Ray always has the next tasks ready as workers free up, so throughput holds; a
task of higher priority enqueued later still starts before the lower ones that wait.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

#: Ray work in flight per lane, as a multiple of what the cluster runs at once
SLACK = 2
#: at least this much in flight, so an autoscaler sees demand for resources not there yet
MIN_IN_FLIGHT = 8


def capacity(options: dict[str, Any], cluster: dict[str, float]) -> int:
    """How many tasks of these Ray options the cluster runs at once (at least 1)."""
    need = {"CPU": float(options.get("num_cpus", 1)), "GPU": float(options.get("num_gpus", 0))}
    if options.get("memory"):
        need["memory"] = float(options["memory"])
    for name, amount in (options.get("resources") or {}).items():
        need[name] = float(amount)
    if options.get("accelerator_type"):
        need[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    fits = [cluster.get(name, 0.0) / amount for name, amount in need.items() if amount > 0]
    if not fits:  # needs nothing: as many as come
        return 1 << 30
    return max(1, math.floor(min(fits) + 1e-9))


class Lane:
    def __init__(self) -> None:
        #: priority -> its waiting items, first out on the left
        self.lines: dict[int, deque[Any]] = {}
        #: the priorities that have a line, negated, in a heap: the highest is first
        self.priorities: list[int] = []
        self.size = 0
        #: Ray tasks (single or packed) sent and not yet finished
        self.in_flight = 0
        #: while a probe finds out how long the queue's tasks take, only this many go out
        self.probing = False

    def __len__(self) -> int:
        return self.size

    def push(self, priority: int, item: Any, ahead: bool = False) -> None:
        """Wait behind the items of `priority` already here, or, `ahead`, before them."""
        line = self.lines.get(priority)
        if line is None:
            line = self.lines[priority] = deque()
            heapq.heappush(self.priorities, -priority)
        if ahead:
            line.appendleft(item)
        else:
            line.append(item)
        self.size += 1

    def pop(self, n: int) -> list[Any]:
        """The next `n` items at most, highest priority first, FIFO within one."""
        out: list[Any] = []
        while len(out) < n and self.priorities:
            top = -self.priorities[0]
            line = self.lines[top]
            take = min(n - len(out), len(line))
            out.extend([line.popleft() for _ in range(take)])
            if not line:
                del self.lines[top]
                heapq.heappop(self.priorities)
        self.size -= len(out)
        return out

    def room(self, cap: int) -> int:
        """Ray tasks this lane may send now, when the cluster runs `cap` of them at once."""
        return max(0, max(MIN_IN_FLIGHT, SLACK * cap) - self.in_flight)
