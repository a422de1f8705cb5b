"""Age limit: a task that waits unstarted past its `ttl` becomes EXPIRED.

The ttl counts from the task's creation, or from its scheduled time when it was given a delay
or `run_at`; the registry drops the timer once the task starts.
"""

from __future__ import annotations

import time

from raybeam.middleware import Middleware
from raybeam.record import TaskRecord, TaskStatus


class AgeLimit(Middleware):
    def on_enqueued(self, rec: TaskRecord) -> None:
        delay = (rec.scheduled_for or rec.created_at) + rec.spec.ttl - time.time()
        self.host.timers.later("ttl", rec.id, delay, lambda: self._expired(rec.id))

    def _expired(self, task_id: str) -> None:
        rec = self.host.task(task_id)
        if rec is None or rec.status is not TaskStatus.PENDING:
            return
        self.host.fail(rec, TaskStatus.EXPIRED, f"not started within its ttl of {rec.spec.ttl} s")
