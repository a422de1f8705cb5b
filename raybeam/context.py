"""What a running task knows about itself: `TaskContext`, and the current one for this thread."""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any

from raybeam.errors import OutsideTask

log = logging.getLogger("raybeam.context")


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
    #: the latest value given to `progress()`; it travels with the attempt's outcome
    last_progress: Any = None
    #: set by the worker: sends a progress value towards the registry, coalesced
    report_progress: Callable[[Any], None] | None = dataclasses.field(default=None, repr=False)

    def progress(self, value: Any) -> None:
        """Tell the caller how far the task is: a number in [0, 1] or a small JSON object
        (at most 4 KiB). Shown on the record, in SSE `progress` events and in the webhook.
        Calls are coalesced (a few stores a second); a bad value is logged, never raised.

        >>> for i, item in enumerate(items):  # doctest: +SKIP
        ...     context.progress((i + 1) / len(items))
        """
        try:
            value = check_progress(value)
        except ValueError as exc:
            log.warning("task %s: progress ignored: %s", self.task_id, exc)
            return
        self.last_progress = value
        if self.report_progress is not None:
            try:
                self.report_progress(value)
            except Exception:
                log.warning("task %s: progress not sent", self.task_id, exc_info=True)


#: the largest progress object, as JSON
MAX_PROGRESS = 4096


def check_progress(value: Any) -> Any:
    """`value` if it is a progress value: a number in [0, 1] or a JSON object ≤ 4 KiB."""
    if isinstance(value, bool):
        raise ValueError(f"progress must be a number in [0, 1] or a JSON object, got {value!r}")
    if isinstance(value, (int, float)):
        if not 0 <= value <= 1:
            raise ValueError(f"a progress number must be in [0, 1], got {value!r}")
        return float(value)
    if not isinstance(value, dict):
        raise ValueError(f"progress must be a number in [0, 1] or a JSON object, got {value!r}")
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a progress object must be JSON: {exc}") from None
    if len(text.encode()) > MAX_PROGRESS:
        raise ValueError(f"a progress object must be at most {MAX_PROGRESS} bytes as JSON")
    return json.loads(text)


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
