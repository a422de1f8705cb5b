"""Retries: a failed attempt runs again while the task has retries left, after a backoff.

An exception the handler raised is retried unless the queue's `retry_for` excludes it (the
worker decides, by isinstance); a system failure (worker crash, OOM kill, node loss) always
is. With a plain int the backoff starts short and doubles, so a cluster-wide outage does not
burn every retry at once; a `raybeam.Retries` policy sets its own.
"""

from __future__ import annotations

from raybeam.middleware import Middleware
from raybeam.policy import delay_seconds
from raybeam.record import TaskRecord
from raybeam.wire import Outcome

#: seconds before the first retry; doubled for each one after, up to MAX_BACKOFF
RETRY_BACKOFF = 0.25
MAX_BACKOFF = 10.0


def backoff(attempts: int) -> float:
    """Seconds to wait after attempt number `attempts` (1-based) failed, by default."""
    return float(min(RETRY_BACKOFF * 2.0 ** (attempts - 1), MAX_BACKOFF))


class Retries(Middleware):
    def retry_delay(self, rec: TaskRecord, outcome: Outcome) -> float | None:
        if outcome["retryable"] and rec.attempts <= rec.spec.retries:
            return delay_seconds(rec.spec.backoff, rec.attempts, backoff(rec.attempts))
        return None
