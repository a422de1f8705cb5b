"""What a running task knows about itself: `TaskContext`, and the current one for this thread."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable
from typing import Any

from raybeam.errors import OutsideTask


@dataclasses.dataclass
class TaskContext:
    """Passed to a handler that declares a `context` parameter.

    >>> @task_queue()
    ... def handler(x: int, context: TaskContext | None = None) -> int:
    ...     return context.attempt if context else 0
    """

    task_id: str
    queue: str
    attempt: int
    on_start_value: Any = None
    callback_url: str | None = None
    timeout: int = 3600
    storage_url: str = ""
    #: outputs saved during this attempt: dicts of id, name, key, size; the registry records them
    saved_outputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "raybeam_task_context", default=None
)


def current_context() -> TaskContext:
    """The context of the task running in this thread; `OutsideTask` when none is."""
    ctx = _current.get()
    if ctx is None:
        raise OutsideTask("this works only inside a running raybeam task")
    return ctx


def set_context(ctx: TaskContext | None) -> contextvars.Token[TaskContext | None]:
    return _current.set(ctx)


def reset_context(token: contextvars.Token[TaskContext | None]) -> None:
    _current.reset(token)


#: run at the end of every attempt in this process, before its outcome is returned (the
#: client's put pipeline registers here, so puts a handler made are stored before a
#: `max_calls` worker exits); the worker side needs no import of the client for it
_attempt_end: list[Callable[[], None]] = []


def at_attempt_end(fn: Callable[[], None]) -> None:
    if fn not in _attempt_end:
        _attempt_end.append(fn)


def attempt_ended() -> None:
    for fn in list(_attempt_end):
        fn()
