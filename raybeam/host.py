"""What the registry's collaborators may ask of it, and what it asks of them.

`Host` is the registry as dispatch, containers and middleware see it: a few reads, the
transitions they may cause (start, settle, fail), staging a change, per-task timers and
background work. `Dispatch` is how the registry turns attempts into work (Ray in
production, a fake in unit tests). Neither names a concrete class, so mypy checks that no
collaborator reaches into the registry's private state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from raybeam.archive import Archive
    from raybeam.record import TaskRecord, TaskStatus
    from raybeam.storage import Storage
    from raybeam.wire import Outcome


class Timers:
    """Per-task timers by kind ("ttl", "timeout", "retry", ...), on the running loop.

    The registry drops a task's timers of a kind when they can no longer fire usefully (a
    started task cannot expire, an ended attempt cannot time out, a final task needs none),
    so an hour of finished tasks leaves no timer behind.
    """

    def __init__(self) -> None:
        #: task id -> kind -> handle: a final task's timers go in one step, whatever the count
        self.handles: dict[str, dict[str, asyncio.TimerHandle]] = {}

    def later(self, kind: str, task_id: str, delay: float, fn: Callable[[], None]) -> None:
        self.cancel(kind, task_id)

        def fire() -> None:
            self._drop(kind, task_id)
            fn()

        handle = asyncio.get_running_loop().call_later(max(0.0, delay), fire)
        self.handles.setdefault(task_id, {})[kind] = handle

    def _drop(self, kind: str, task_id: str) -> asyncio.TimerHandle | None:
        kinds = self.handles.get(task_id)
        if kinds is None:
            return None
        handle = kinds.pop(kind, None)
        if not kinds:
            del self.handles[task_id]
        return handle

    def cancel(self, kind: str, task_id: str) -> None:
        handle = self._drop(kind, task_id)
        if handle is not None:
            handle.cancel()

    def cancel_all(self, task_id: str) -> None:
        for handle in self.handles.pop(task_id, {}).values():
            handle.cancel()

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

    def archive_ended(self, older_than: float) -> Awaitable[int]:
        """Move final records that ended this long ago to the archive; how many moved."""
        ...


class Dispatch(Protocol):
    def add_function(self, digest: str, blob: bytes) -> None: ...

    def has_function(self, digest: str) -> bool: ...

    def submit(self, rec: TaskRecord) -> None:
        """Hand the next attempt of `rec` out (a new submission id is set on it)."""
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
