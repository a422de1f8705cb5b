"""Age limit: a task that waits unstarted past its `ttl` becomes EXPIRED.

The ttl counts from the task's creation, or from its scheduled time when it was given a delay
or `run_at`; a task that has started is not expired.

Every task has a ttl, so this is on the hot path. Tasks are created in order, so the deadlines
of one ttl come in order too: they wait in a line per ttl, behind one loop timer for the
earliest, with no heap and nothing to cancel (a task that started is passed over when its
deadline comes). Each line is swept of tasks that started once the lines have doubled since
the last sweep, so they hold about twice the waiting tasks at most. A delayed task, one that
comes out of order (resumed after a restart), and a ttl beyond the first `LINES` go through
the registry's timers instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque

from raybeam.host import Host
from raybeam.middleware import Middleware
from raybeam.record import TaskRecord, TaskStatus

log = logging.getLogger("raybeam.registry")
PENDING = TaskStatus.PENDING

#: ttls with a line of their own; tasks of other ttls use the registry's timers
LINES = 16
#: entries the lines may hold beyond twice those kept by the last sweep
SWEEP_AFTER = 4096
#: seconds asyncio may wake early by
_EARLY = 0.001


class AgeLimit(Middleware):
    def __init__(self, host: Host) -> None:
        super().__init__(host)
        #: ttl -> (deadline, task id), in the order the tasks were enqueued
        self.lines: dict[float, deque[tuple[float, str]]] = {}
        self.size = 0
        self.kept = 0
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at = math.inf

    def on_enqueued(self, rec: TaskRecord) -> None:
        ttl = rec.spec.ttl
        if rec.scheduled_for is None:
            deadline = rec.created_at + ttl
            line = self.lines.get(ttl)
            if line is None and len(self.lines) < LINES:
                line = self.lines[ttl] = deque()
            if line is not None and (not line or line[-1][0] <= deadline):
                line.append((deadline, rec.id))
                self.size += 1
                if deadline < self._wake_at:
                    self._schedule(deadline)
                if self.size > 2 * self.kept + SWEEP_AFTER:
                    self._sweep()
                return
        delay = (rec.scheduled_for or rec.created_at) + ttl - time.time()
        self.host.timers.later("ttl", rec.id, delay, lambda: self._expired(rec.id))

    def _due(self, task_id: str, deadline: float) -> bool:
        """The task is still waiting for this deadline (not started, nor another task of
        the same id made since)."""
        rec = self.host.task(task_id)
        return (
            rec is not None and rec.status is PENDING and rec.created_at + rec.spec.ttl == deadline
        )

    def _schedule(self, deadline: float) -> None:
        if self._wake is not None:
            self._wake.cancel()
        delay = max(0.0, deadline - time.time())
        self._wake = asyncio.get_running_loop().call_later(delay, self._fire)
        self._wake_at = deadline

    def _fire(self) -> None:
        self._wake, self._wake_at = None, math.inf
        now = time.time() + _EARLY
        for ttl, line in list(self.lines.items()):
            while line and line[0][0] <= now:
                deadline, task_id = line.popleft()
                self.size -= 1
                if self._due(task_id, deadline):
                    try:
                        self._expired(task_id)
                    except Exception:
                        log.exception("ttl of task %s failed", task_id)
            if not line:
                del self.lines[ttl]
        heads = [line[0][0] for line in self.lines.values()]
        if heads:
            self._schedule(min(heads))

    def _sweep(self) -> None:
        """Drop the entries of tasks that started or are gone."""
        for ttl, line in self.lines.items():
            self.lines[ttl] = deque(entry for entry in line if self._due(entry[1], entry[0]))
        self.size = self.kept = sum(len(line) for line in self.lines.values())

    def _expired(self, task_id: str) -> None:
        rec = self.host.task(task_id)
        if rec is None or rec.status is not PENDING:
            return
        self.host.fail(rec, TaskStatus.EXPIRED, f"not started within its ttl of {rec.spec.ttl} s")
