"""What the dashboard shows, from what the registry answers: queue rows, throughput, attempts.

Throughput comes from the registry's run-duration histograms (`raybeam.middleware.metrics`),
whose counts only grow while a registry lives: each summary samples them, and the rate over
a minute is the difference of two samples. Samples live in this replica for `KEEP` seconds,
so a fresh replica shows throughput from its first summary on.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict

from raybeam.middleware.metrics import RUN_DURATION
from raybeam.record import TaskStatus, iso

#: how an attempt can end that counts as a task done (RETRY: failed, with another to come)
FINISHED = frozenset({"COMPLETE", "FAILED", "CANCELLED", "TIMEOUT"})
FAILED = frozenset({"FAILED", "TIMEOUT"})
#: how an attempt can end that failed it
FAILED_ATTEMPT = frozenset({"RETRY", "FAILED", "TIMEOUT", "LOST"})
#: one-minute buckets of throughput shown per queue
MINUTES = 10
#: seconds of samples kept (one more minute than shown: a bucket needs its start)
KEEP = (MINUTES + 1) * 60.0
#: samples closer together than this replace each other
SAMPLE_EVERY = 1.0

Counters = dict[str, dict[str, int]]
#: the counters at the start and at the end of a minute
Window = tuple[Counters, Counters]


class Attempt(TypedDict):
    n: int
    started_at: str | None
    ended_at: str | None
    seconds: float | None
    outcome: str
    failure_reason: str | None


class Throughput:
    """Attempts ended per minute, per queue and outcome, from sampled registry counters."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: (time, counters), at least SAMPLE_EVERY apart but for the latest
        self.samples: deque[tuple[float, Counters]] = deque()

    def observe(self, counters: Counters) -> None:
        now = self.clock()
        if self.samples and _went_down(self.samples[-1][1], counters):
            self.samples.clear()  # a new registry: its counters started again from zero
        if len(self.samples) >= 2 and self.samples[-1][0] - self.samples[-2][0] < SAMPLE_EVERY:
            self.samples.pop()  # the latest was kept only until a later one came
        self.samples.append((now, counters))
        while self.samples and now - self.samples[0][0] > KEEP:
            self.samples.popleft()

    def windows(self) -> list[Window | None]:
        """The counters at the start and the end of each of the last `MINUTES` minutes,
        oldest first; None for a minute that ended before the first sample (a minute
        that began before it starts at the first sample)."""
        if not self.samples:
            return [None] * MINUTES
        times = [t for t, _ in self.samples]
        first, now = times[0], times[-1]

        def at(t: float) -> Counters:  # the latest sample taken by time t
            return self.samples[max(0, bisect.bisect_right(times, t) - 1)][1]

        found: list[Window | None] = []
        for age in range(MINUTES, 0, -1):
            start, end = now - age * 60.0, now - (age - 1) * 60.0
            found.append(None if end <= first else (at(start), at(end)))
        return found

    def span(self) -> float:
        """Seconds between the first and the latest sample."""
        return self.samples[-1][0] - self.samples[0][0] if self.samples else 0.0


def per_minute(
    windows: list[Window | None], queue: str, outcomes: frozenset[str] = FINISHED
) -> list[int | None]:
    """Attempts of `queue` that ended with one of `outcomes` in each window."""
    return [
        None if w is None else _total(w[1], queue, outcomes) - _total(w[0], queue, outcomes)
        for w in windows
    ]


def _total(counters: Counters, queue: str, outcomes: frozenset[str]) -> int:
    return sum(n for status, n in counters.get(queue, {}).items() if status in outcomes)


def _went_down(before: Counters, after: Counters) -> bool:
    return any(
        n > after.get(queue, {}).get(status, 0)
        for queue, by in before.items()
        for status, n in by.items()
    )


def counters(metrics: Mapping[str, Any]) -> Counters:
    """Attempts ended so far, by queue and outcome, from the registry's `metrics()` data."""
    found: Counters = {}
    for labels, _counts, _sum, count in metrics.get(RUN_DURATION, []):
        queue, status = labels
        found.setdefault(queue, {})[status] = int(count)
    return found


def queue_rows(metrics: Mapping[str, Any], throughput: Throughput) -> list[dict[str, Any]]:
    """One row per queue the registry knows (registered ones with no tasks included)."""
    rows = []
    windows = throughput.windows()
    for name, stats in sorted(metrics.get("queues", {}).items()):
        by_status = {s.value: int(stats.get("by_status", {}).get(s.value, 0)) for s in TaskStatus}
        rows.append(
            {
                "name": name,
                "queue_depth": int(stats.get("queue_depth", 0)),
                "running": by_status["RUNNING"],
                "active_containers": int(stats.get("active_containers", 0)),
                "by_status": by_status,
                "total": sum(by_status.values()),
                "finished_per_minute": per_minute(windows, name),
                "failed_per_minute": per_minute(windows, name, FAILED),
            }
        )
    return rows


def attempts(history: Iterable[Iterable[Any]], failure_reason: str | None) -> list[Attempt]:
    """The attempts a status history tells of: each RUNNING begins one, the next status
    ends it. The registry keeps only the latest failure reason: it goes on the latest
    attempt that ended in failure."""
    found: list[Attempt] = []
    started: list[float] = []
    for status, at in (tuple(h) for h in history):
        open_ = bool(found) and found[-1]["outcome"] == "RUNNING"
        if status == TaskStatus.RUNNING.value:
            if open_:  # started again with no recorded end
                found[-1]["outcome"] = "LOST"
            found.append(
                {
                    "n": len(found) + 1,
                    "started_at": iso(float(at)),
                    "ended_at": None,
                    "seconds": None,
                    "outcome": "RUNNING",
                    "failure_reason": None,
                }
            )
            started.append(float(at))
        elif open_:
            found[-1]["outcome"] = str(status)
            found[-1]["ended_at"] = iso(float(at))
            found[-1]["seconds"] = round(float(at) - started[-1], 3)
    for attempt in reversed(found):
        if attempt["outcome"] in FAILED_ATTEMPT:
            attempt["failure_reason"] = failure_reason
            break
    return found


def history_rows(history: Iterable[Iterable[Any]]) -> list[dict[str, Any]]:
    return [{"status": str(status), "at": iso(float(at))} for status, at in history]
