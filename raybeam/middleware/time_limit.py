"""Time limit: an attempt that runs past the task's `timeout` ends the task as TIMEOUT.

Timed from the worker's start report (only a running attempt times out), which arrives
START_REPORT_DELAY after the start. The registry drops the timer when the attempt ends.
"""

from __future__ import annotations

from raybeam.middleware import Middleware
from raybeam.record import TaskRecord, TaskStatus
from raybeam.wire import START_REPORT_DELAY


class TimeLimit(Middleware):
    def on_started(self, rec: TaskRecord) -> None:
        if rec.spec.timeout <= 0:
            return
        run = rec.run
        delay = rec.spec.timeout - START_REPORT_DELAY
        self.host.timers.later("timeout", rec.id, delay, lambda: self._expired(rec.id, run))

    def _expired(self, task_id: str, run: str) -> None:
        rec = self.host.task(task_id)
        if rec is None or rec.run != run or rec.status is not TaskStatus.RUNNING:
            return
        reason = f"attempt {rec.attempts} ran past the timeout of {rec.spec.timeout} s"
        self.host.fail(rec, TaskStatus.TIMEOUT, reason)
