"""`Task`, a read handle on one task; `get_task`, `list_tasks` and `wait`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import IO, Any

from raybeam import connection
from raybeam.errors import (
    InvalidOutputPath,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
)
from raybeam.outputs import OutputFile
from raybeam.record import TaskStatus
from raybeam.wire import decode_result

_ERRORS: dict[TaskStatus, type[Exception]] = {
    TaskStatus.CANCELLED: TaskCancelled,
    TaskStatus.TIMEOUT: TaskTimeout,
    TaskStatus.EXPIRED: TaskExpired,
}


class Task:
    """A handle on one task; every read asks the registry afresh.

    >>> task = handler.put(x=10)  # doctest: +SKIP
    >>> task.result(timeout=60)  # doctest: +SKIP
    {'result': 20}
    """

    def __init__(self, task_id: str) -> None:
        self.id = task_id

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"Task({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def info(self) -> dict[str, Any]:
        """The task record of SPEC §3, output links signed afresh."""
        info: dict[str, Any] | None = connection.call("get", self.id)
        if info is None:
            raise TaskNotFound(f"no task with id {self.id!r}")
        return info

    def status(self) -> TaskStatus:
        return TaskStatus(self.info()["status"])

    def outputs(self) -> list[OutputFile]:
        """The saved outputs, in the order they were saved, links signed afresh.

        >>> task.outputs()[0].url  # doctest: +SKIP
        'http://127.0.0.1:8000/output/id/c339...?expires=...&signature=...'
        """
        return [
            OutputFile(name=o["name"], url=o["url"], expires_in=o["expires_in"])
            for o in self.info()["outputs"]
        ]

    def open_output(self, name: str | None = None) -> IO[bytes]:
        """Open a saved output for reading (the first one when `name` is None), straight from
        storage: this process needs access to `RAYBEAM_STORAGE`, as a worker has.

        >>> with task.open_output("sum.txt") as f:  # doctest: +SKIP
        ...     data = f.read()
        """
        from raybeam.storage import storage_from_settings

        where = connection.call("output_location", self.id, name)
        if where is None:
            raise TaskNotFound(f"no task with id {self.id!r}")
        if where["key"] is None:
            raise InvalidOutputPath(
                f"task {self.id} has no output named {name!r}; it has {where['names']}"
            )
        stream: IO[bytes] = storage_from_settings(where["storage"]).open(where["key"], "rb")
        return stream

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the task to end and return its value, or raise what ended it.

        Raises TaskFailed, TaskCancelled, TaskTimeout or TaskExpired for those statuses, and
        the builtin TimeoutError when `timeout` seconds pass first.
        """
        info = connection.call("wait_final", self.id, timeout)
        if info is None:
            raise TaskNotFound(f"no task with id {self.id!r}")
        status = TaskStatus(info["status"])
        if not status.is_final:
            raise TimeoutError(f"task {self.id} is still {status.value} after {timeout} s")
        if status is TaskStatus.COMPLETE:
            return decode_result(info["result"], info.get("result_blob"))
        if status is TaskStatus.FAILED:
            raise TaskFailed(self.id, info["failure_reason"])
        raise _ERRORS[status](
            f"task {self.id} ended {status.value}: {info['failure_reason'] or ''}".rstrip(": ")
        )

    def cancel(self) -> None:
        """Cancel the task if it is not final yet (a running attempt is stopped)."""
        connection.call("cancel", [self.id])

    def retry(self) -> Task:
        """Requeue a final task: a new task with the same arguments and options, linked to
        this one (`retry_of` / `retried_as`); this one keeps its final status.
        TaskNotFinal while it is still pending or running.

        >>> new = task.retry()  # doctest: +SKIP
        """
        (made,) = connection.call("retry_tasks", [self.id], None, None, 1)
        return Task(made["task_id"])


def get_task(task_id: str) -> Task:
    """A handle on an existing task; TaskNotFound at once for an unknown id."""
    if not connection.call("exists", [task_id])[0]:
        raise TaskNotFound(f"no task with id {task_id!r}")
    return Task(task_id)


def list_tasks(
    queue: str | None = None, status: TaskStatus | str | None = None, limit: int = 100
) -> list[Task]:
    """Tasks newest first, optionally of one queue and/or one status."""
    wanted = TaskStatus.parse(status).value if status is not None else None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    infos, _ = connection.call("list", queue, wanted, limit, None)
    return [Task(i["id"]) for i in infos]


def retry_tasks(
    task_ids: Sequence[str | Task] | None = None,
    queue: str | None = None,
    status: TaskStatus | str | None = "FAILED",
    limit: int = 100,
) -> list[Task]:
    """Requeue final tasks: the ones named, or the newest `limit` of `queue` (any queue
    when None) with `status` (FAILED by default; None for any final status) that were not
    requeued already. Returns the new tasks, in the same order.

    >>> raybeam.retry_tasks(queue="render", status="FAILED")  # doctest: +SKIP
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    wanted = TaskStatus.parse(status).value if status is not None else None
    if wanted is not None and not TaskStatus(wanted).is_final:
        raise ValueError(f"only final tasks can be requeued, not {wanted} ones")
    ids = None if task_ids is None else [str(t) for t in task_ids]
    made: list[dict[str, str]] = connection.call("retry_tasks", ids, queue, wanted, limit)
    return [Task(m["task_id"]) for m in made]


#: tasks that one poll of `wait` asks about
WAIT_WINDOW = 1000


def wait(tasks: Sequence[Task], progress: bool = False, timeout: float | None = None) -> list[Task]:
    """Block until every task is final; with `progress`, show a bar (terminal or notebook).

    Returns the tasks; TimeoutError when `timeout` seconds pass first.
    """
    ids = [t.id for t in tasks]
    # asked about a window at a time, in the order given: a poll costs the window, not all
    # the tasks (a wait on 100k tasks would otherwise send and scan 100k ids every 50 ms)
    unique = list(dict.fromkeys(ids))
    window: list[str] = []  # asked about, not final yet
    taken = 0  # of `unique`, into a window so far
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), desc="tasks", unit="task")
    try:
        while window or taken < len(unique):
            wait_for = 1.0
            if deadline is not None:
                wait_for = min(wait_for, max(0.0, deadline - time.monotonic()))
            more = unique[taken : taken + WAIT_WINDOW - len(window)]
            window, taken = window + more, taken + len(more)
            done = set(connection.call("wait_any", window, wait_for))
            asked, window = len(window), [t for t in window if t not in done]
            left = len(window) + len(unique) - taken
            if bar is not None and done:
                bar.update(len(done))
            if left and 0 < len(done) < asked:
                # caught up with the tasks as they finish: let more finish before asking
                # again (a window all done goes straight on: 100k tasks found done would
                # otherwise take 100 of these pauses, 5 s)
                time.sleep(0.05)
            if left and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{left} of {len(ids)} tasks not final after {timeout} s")
    finally:
        if bar is not None:
            bar.close()
    return list(tasks)
