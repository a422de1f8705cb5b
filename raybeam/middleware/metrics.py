"""Latency histograms for `GET /metrics`: enqueue to first start, and each attempt's run time.

The registry feeds every status change through `on_transition`; `metrics()` hands the
histograms out as plain data, and `render()` writes that data (with the task counts the
registry adds) in the Prometheus text format.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from raybeam.host import Host
from raybeam.middleware import Middleware
from raybeam.record import TaskRecord, TaskStatus

#: upper bounds (seconds) of the histogram buckets; +Inf is implied
BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip

START_LATENCY = "raybeam_task_start_latency_seconds"
RUN_DURATION = "raybeam_task_run_duration_seconds"

_HELP = {
    "raybeam_tasks": ("gauge", "Tasks the registry holds, by queue and status."),
    "raybeam_queue_depth": ("gauge", "Tasks of the queue that are not final."),
    "raybeam_active_containers": ("gauge", "Attempts of the queue running now."),
    START_LATENCY: ("histogram", "Seconds from enqueue to the first start of a task."),
    RUN_DURATION: ("histogram", "Seconds each attempt ran, by queue and how it ended."),
}


@dataclasses.dataclass
class Histogram:
    """Observations counted per bucket (not cumulative), with their sum and count."""

    counts: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        if value < 0.0:
            value = 0.0
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1  # the first bound >= value
        self.sum += value
        self.count += 1


class LatencyMetrics(Middleware):
    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self.start_latency: dict[tuple[str, ...], Histogram] = {}
        self.run_duration: dict[tuple[str, ...], Histogram] = {}

    def on_transition(self, rec: TaskRecord, old: TaskStatus, new: TaskStatus) -> None:
        # twice for every task: the histogram is looked up here, not through a helper
        labels: tuple[str, ...]
        since: float | None
        if new is _RUNNING and rec.attempts <= 1:
            labels, table, since = (rec.queue,), self.start_latency, rec.created_at
        elif old is _RUNNING:
            history = rec.history
            since = rec.started_at
            if len(history) >= 2 and history[-2][0] == _RUNNING_VALUE:
                since = history[-2][1]
            labels, table = (rec.queue, new._value_), self.run_duration
        else:
            return
        if since is None:
            return
        histogram = table.get(labels)
        if histogram is None:
            histogram = table[labels] = Histogram()
        histogram.observe(rec.updated_at - since)

    def metrics(self) -> dict[str, Any]:
        """The histograms as plain data: `{name: [[labels, counts, sum, count], ...]}`."""
        return {
            START_LATENCY: [
                [list(k), h.counts, h.sum, h.count] for k, h in self.start_latency.items()
            ],
            RUN_DURATION: [
                [list(k), h.counts, h.sum, h.count] for k, h in self.run_duration.items()
            ],
        }


_RUNNING = TaskStatus.RUNNING
_RUNNING_VALUE = _RUNNING.value
_LABELS = {START_LATENCY: ("queue",), RUN_DURATION: ("queue", "status")}


def render(data: Mapping[str, Any]) -> str:
    """Prometheus text (format 0.0.4) of the registry's `metrics()` data."""
    lines: list[str] = []
    queues: Mapping[str, Mapping[str, Any]] = data.get("queues", {})

    def header(name: str) -> None:
        kind, help_text = _HELP[name]
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    header("raybeam_tasks")
    for queue, stats in sorted(queues.items()):
        by_status = stats.get("by_status", {})
        for status in TaskStatus:
            count = by_status.get(status.value, 0)
            lines.append(f"raybeam_tasks{_labels(queue=queue, status=status.value)} {count}")
    for name, key in (
        ("raybeam_queue_depth", "queue_depth"),
        ("raybeam_active_containers", "active_containers"),
    ):
        header(name)
        for queue, stats in sorted(queues.items()):
            lines.append(f"{name}{_labels(queue=queue)} {int(stats.get(key, 0))}")
    for name in (START_LATENCY, RUN_DURATION):
        header(name)
        for labels, counts, total, count in sorted(data.get(name, []), key=lambda r: r[0]):
            base = dict(zip(_LABELS[name], labels, strict=True))
            lines.extend(_histogram_lines(name, base, counts, total, count))
    return "\n".join(lines) + "\n"


def _histogram_lines(
    name: str, labels: dict[str, str], counts: Iterable[int], total: float, count: int
) -> list[str]:
    out = []
    cumulative = 0
    for bound, n in zip((*BUCKETS, math.inf), counts, strict=True):
        cumulative += n
        le = "+Inf" if math.isinf(bound) else repr(float(bound))
        out.append(f"{name}_bucket{_labels(**labels, le=le)} {cumulative}")
    out.append(f"{name}_sum{_labels(**labels)} {float(total)!r}")
    out.append(f"{name}_count{_labels(**labels)} {int(count)}")
    return out


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
