"""What a restarted registry decides about the work its previous incarnation left."""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

from raybeam.host import Dispatch
from raybeam.journal import Journal
from raybeam.record import TaskRecord, TaskSpec, TaskStatus

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


@dataclasses.dataclass
class State:
    """What the journal holds, as the registry keeps it in memory."""

    queues: dict[str, dict[str, Any]]
    #: oldest first, so listing newest first walks the dict backwards
    tasks: dict[str, TaskRecord]
    payloads: dict[str, str]
    idempotency: dict[str, dict[str, Any]]
    #: what could not be read, and was skipped
    problems: list[str]


def load_state(journal: Journal) -> State:
    # tens of thousands of long-lived objects are made here: the cyclic collector would
    # walk them again and again while they are made, and find nothing to collect
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load_state(journal)
    finally:
        if collecting:
            gc.enable()


def _load_state(journal: Journal) -> State:
    entries, problems = journal.load()
    state = State({}, {}, {}, {}, problems)
    records = []
    specs: dict[str, TaskSpec] = {}  # records of one queue share a spec, as when made
    for (kind, key), data in entries.items():
        if kind == "queue":
            state.queues[key] = data
        elif kind == "payload":
            state.payloads[key] = data
        elif kind == "idem":
            state.idempotency[key] = data
        elif kind == "task":
            try:
                records.append(TaskRecord.from_json(data, specs))
            except (TypeError, ValueError, KeyError) as exc:
                problems.append(f"task {key} unreadable ({exc}); skipped")
    for rec in sorted(records, key=lambda r: r.created_at):
        state.tasks[rec.id] = rec
    return state


def stored(kind: str, value: Any) -> Any:
    """What the journal stores for a staged value: records in their compact form."""
    return value.stored() if kind == "task" and value is not None else value


def everything(state: Any) -> list[tuple[str, str, Any]]:
    """Every live (kind, key, value) of a registry, for a snapshot; serialised later."""
    entries: list[tuple[str, str, Any]] = [("queue", k, v) for k, v in state.queues.items()]
    entries += [("payload", k, v) for k, v in state.payloads.items()]
    entries += [("idem", k, v) for k, v in state.idempotency.entries.items()]
    entries += [("task", r.id, r) for r in state.tasks.values()]
    return entries
