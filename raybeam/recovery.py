"""What a restarted registry decides about the work its previous incarnation left."""

from __future__ import annotations

from raybeam.host import Dispatch
from raybeam.journal import Journal
from raybeam.record import TaskRecord, TaskStatus

#: attempts cut short by a registry restart beyond `retries` before a task is given up
RESTART_ALLOWANCE = 3


def resume_decision(rec: TaskRecord, has_payload: bool, function_error: str | None) -> str | None:
    """Why a restarted registry cannot run a task that was not final, or None to run it."""
    if not has_payload:
        return "its arguments were not found in storage"
    if function_error is not None:
        return function_error
    if rec.status is TaskStatus.RUNNING and rec.attempts > rec.spec.retries + RESTART_ALLOWANCE:
        # a task whose attempts keep taking the registry down (say, by memory)
        return f"the registry restarted during attempt {rec.attempts}, its last allowed one"
    return None


def load_functions(journal: Journal, dispatch: Dispatch, digests: set[str]) -> dict[str, str]:
    """Hand each stored function to dispatch; what went wrong, by digest. Blocking: run it
    in a thread, off the registry's event loop."""
    problems = {}
    for digest in digests:
        if dispatch.has_function(digest):
            continue
        try:
            blob = journal.load_blob(f"{digest}.pkl")
        except Exception as exc:
            problems[digest] = f"the queue's function could not be loaded: {exc}"
            continue
        if blob is None:
            problems[digest] = "the queue's function was not found in storage"
        else:
            dispatch.add_function(digest, blob)
    return problems
