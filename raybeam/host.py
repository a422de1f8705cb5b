"""What the registry's collaborators may ask of it, and what it asks of them.

`Host` is the registry as dispatch, containers and middleware see it: a few reads, the
transitions they may cause (start, settle, fail), staging a change, per-task timers and
background work. `Dispatch` is how the registry turns attempts into work (Ray in
production, a fake in unit tests). Neither names a concrete class, so mypy checks that no
collaborator reaches into the registry's private state.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from raybeam.archive import Archive
    from raybeam.record import TaskRecord, TaskStatus
    from raybeam.storage import Storage
    from raybeam.wire import Outcome


_RESOLUTION = time.get_clock_info("monotonic").resolution


class Timers:
    """Per-task timers by kind ("ttl", "timeout", "retry", ...), on the running loop.

    The registry drops a task's timers of a kind when they can no longer fire usefully (a
    started task cannot expire, an ended attempt cannot time out, a final task needs none),
    so an hour of finished tasks leaves no timer behind.

    Every task gets a ttl timer, so timers are on the hot path: they wait in one heap of
    plain tuples, compared in C, behind a single loop timer for the earliest. (asyncio's own
    timer heap compares its handles in Python: about 5 µs a timer with 100,000 waiting.)
    A cancelled timer stays in the heap, marked, until the heap is mostly such marks.
    """

    def __init__(self) -> None:
        #: task id -> kind -> [kind, task id, callback or None once cancelled]
        self.handles: dict[str, dict[str, list[Any]]] = {}
        self.heap: list[tuple[float, int, list[Any]]] = []
        self.cancelled = 0
        self._order = itertools.count()
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at = math.inf

    def later(self, kind: str, task_id: str, delay: float, fn: Callable[[], None]) -> None:
        self.cancel(kind, task_id)
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        entry = [kind, task_id, fn]
        heapq.heappush(self.heap, (when, next(self._order), entry))
        self.handles.setdefault(task_id, {})[kind] = entry
        if when < self._wake_at:
            self._schedule(loop, when)

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._wake is not None:
            self._wake.cancel()
        self._wake, self._wake_at = loop.call_at(when, self._fire), when

    def _fire(self) -> None:
        self._wake, self._wake_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time() + _RESOLUTION  # asyncio may call a little early, by up to this
        while self.heap and self.heap[0][0] <= now:
            entry = heapq.heappop(self.heap)[2]
            kind, task_id, fn = entry
            if fn is None:
                self.cancelled -= 1
                continue
            self._drop(kind, task_id)
            try:
                fn()
            except Exception:
                logging.getLogger("raybeam.registry").exception(
                    "%s timer of task %s failed", kind, task_id
                )
        if self.heap:
            self._schedule(loop, self.heap[0][0])

    def _drop(self, kind: str, task_id: str) -> list[Any] | None:
        kinds = self.handles.get(task_id)
        if kinds is None:
            return None
        entry = kinds.pop(kind, None)
        if not kinds:
            del self.handles[task_id]
        return entry

    def _mark(self, entry: list[Any]) -> None:
        entry[2] = None
        self.cancelled += 1
        if self.cancelled > 1024 and 2 * self.cancelled > len(self.heap):
            self.heap = [item for item in self.heap if item[2][2] is not None]
            heapq.heapify(self.heap)
            self.cancelled = 0

    def cancel(self, kind: str, task_id: str) -> None:
        if task_id in self.handles:  # most tasks have no timer left to cancel
            entry = self._drop(kind, task_id)
            if entry is not None:
                self._mark(entry)

    def cancel_all(self, task_id: str) -> None:
        if task_id in self.handles:
            for entry in self.handles.pop(task_id).values():
                self._mark(entry)

    def has(self, task_id: str, kind: str | None = None) -> bool:
        kinds = self.handles.get(task_id, {})
        return bool(kinds) if kind is None else kind in kinds


class Host(Protocol):
    storage: Storage
    storage_url: str
    output_url_expires: int
    retention_seconds: float
    archive_after: float
    archive: Archive
    timers: Timers

    def task(self, task_id: str) -> TaskRecord | None: ...

    def records(self) -> Iterable[TaskRecord]: ...

    def definition(self, queue: str) -> dict[str, Any] | None: ...

    def payload(self, task_id: str) -> str | None: ...

    def depth(self, queue: str) -> int: ...

    def waiting(self, queue: str) -> int:
        """Tasks of `queue` not final and not running."""
        ...

    def new_run(self) -> str:
        """A fresh submission id: reports from any other submission are stale."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def start(self, rec: TaskRecord, container_id: str | None, at: float | None = None) -> None:
        """An attempt of `rec` began: count it and make it RUNNING."""
        ...

    def settle(self, task_id: str, run: str, outcome: Outcome) -> Awaitable[None]:
        """Apply how submission `run` of a task ended: COMPLETE, a retry, or FAILED."""
        ...

    def settle_many(self, reports: Iterable[tuple[str, str, Outcome]]) -> Awaitable[None]:
        """`settle` for several (task id, run, outcome), stored in one commit."""
        ...

    def fail(self, rec: TaskRecord, status: TaskStatus, reason: str) -> None:
        """End `rec` with a final `status` and `reason`, stopping its work (the one path)."""
        ...

    def stage(self, rec: TaskRecord) -> None:
        """Note a change of `rec` for the next journal batch."""
        ...

    def persist(self, *records: TaskRecord) -> Awaitable[None]:
        """Return once every change so far (these records' included) is stored."""
        ...

    def forget(self, rec: TaskRecord) -> None:
        """Drop a final record (retention); stored with the next batch."""
        ...

    def public_outputs(self, rec: TaskRecord) -> list[dict[str, Any]]: ...

    def archived(self) -> Awaitable[Archive]:
        """The archive, once its index is read (after a restart, in the background)."""
        ...

    def archive_ended(self, older_than: float) -> Awaitable[int]:
        """Move final records that ended this long ago to the archive; how many moved."""
        ...

    def merge_archive(self) -> Awaitable[int]:
        """Merge small archive files once; how many files it merged away."""
        ...

    def retire(self, paths: list[str]) -> None:
        """Delete these archive files a minute from now (reads may be at them)."""
        ...

    def may_write(self) -> bool:
        """Whether this registry may change storage now: it holds the storage's lease, and
        the lease is current (see fencing). Archive files and retention's deletions ask."""
        ...


class Dispatch(Protocol):
    def add_function(self, digest: str, blob: bytes) -> None: ...

    def has_function(self, digest: str) -> bool: ...

    def submit(self, rec: TaskRecord) -> None:
        """Hand the next attempt of `rec` out (a new submission id is set on it)."""
        ...

    def submit_all(self, records: Sequence[TaskRecord]) -> None:
        """`submit` each of `records`, in turn."""
        ...

    def stop(self, rec: TaskRecord) -> None:
        """Stop whatever work `rec` has (timeout, cancel); nothing if it has none."""
        ...

    def ended(self, rec: TaskRecord) -> None:
        """`rec` is final: drop what dispatch holds for it."""
        ...

    def observe(self, queue: str, duration: float) -> None:
        """An attempt of `queue` ran `duration` seconds (decides packing)."""
        ...

    def containers(self, queue: str) -> int | None:
        """Warm workers of `queue`, None for a plain queue."""
        ...

    def upkeep(self) -> Coroutine[Any, Any, None]: ...
