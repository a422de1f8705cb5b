"""The errors raybeam raises. Every one subclasses `RaybeamError`."""

from __future__ import annotations


class RaybeamError(Exception):
    """Base class of every error raybeam raises."""


class TaskFailed(RaybeamError):
    """The task ended FAILED; `traceback` holds the remote traceback text of the last attempt."""

    def __init__(self, task_id: str, traceback: str | None) -> None:
        self.task_id = task_id
        self.traceback = traceback or ""
        super().__init__(f"task {task_id} failed:\n{self.traceback}".rstrip())


class TaskCancelled(RaybeamError):
    """The task was cancelled before it finished."""


class TaskTimeout(RaybeamError):
    """An attempt of the task ran past its `timeout`."""


class TaskExpired(RaybeamError):
    """The task waited unstarted for longer than its `ttl`."""


class QueueFull(RaybeamError):
    """The queue already holds `max_pending_tasks` tasks that are not final."""


class TaskNotFound(RaybeamError, KeyError):
    """No task has this id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"


class QueueNotFound(RaybeamError, KeyError):
    """No queue of this name is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "queue not found"


class InvalidOutputPath(RaybeamError, ValueError):
    """An output name or path that cannot be stored safely, or a file that does not exist."""


class InvalidArguments(RaybeamError, TypeError):
    """The arguments given to `.put()` do not bind to the handler's signature."""


class InvalidConfiguration(RaybeamError, ValueError):
    """A decorator parameter, option or setting has a value raybeam cannot use."""


class OutsideTask(RaybeamError, RuntimeError):
    """Something that only works inside a running task was used outside one."""


class IdempotencyConflict(RaybeamError, ValueError):
    """An idempotency key already names a task made with other arguments or options."""


class TaskNotFinal(RaybeamError):
    """Only a final task can be requeued; this one is still pending or running."""


class CorruptBlob(RaybeamError, ValueError):
    """A stored function blob does not match the digest it is stored under."""

    def __init__(self, digest: str, message: str) -> None:
        self.digest = digest
        super().__init__(message)


class StorageInUse(RaybeamError):
    """Another registry (of another Ray cluster) holds the storage's lease."""


class SegmentExists(StorageInUse):
    """A journal segment (or snapshot) this registry was creating exists already: another
    registry writes to the same storage. Segments are never overwritten, so this is where a
    second writer is stopped, whatever the lease says."""
