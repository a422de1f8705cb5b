"""The task record, its statuses, and the one table of allowed status transitions."""

from __future__ import annotations

import dataclasses
import enum
import time
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any

from raybeam import codec


class TaskStatus(str, enum.Enum):
    #: enqueued, waiting for a worker
    PENDING = "PENDING"
    #: an attempt is running
    RUNNING = "RUNNING"
    #: the last attempt failed; another one is queued
    RETRY = "RETRY"
    #: finished; the return value is stored
    COMPLETE = "COMPLETE"
    #: every allowed attempt failed
    FAILED = "FAILED"
    #: cancelled before it finished
    CANCELLED = "CANCELLED"
    #: an attempt ran past the task's timeout
    TIMEOUT = "TIMEOUT"
    #: waited unstarted past the task's ttl
    EXPIRED = "EXPIRED"

    #: COMPLETE, FAILED, CANCELLED, TIMEOUT or EXPIRED: the task changes no more (a plain
    #: attribute of each member, set below: the registry asks several times per task)
    is_final: bool

    @classmethod
    def parse(cls, value: TaskStatus | str) -> TaskStatus:
        """A status from itself or its name, case-insensitive; ValueError names the valid ones."""
        if isinstance(value, TaskStatus):
            return value
        try:
            return cls(str(value).upper())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown task status {value!r}; expected one of {names}") from None


FINAL_STATUSES = frozenset(
    {
        TaskStatus.COMPLETE,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.TIMEOUT,
        TaskStatus.EXPIRED,
    }
)

for _status in TaskStatus:
    _status.is_final = _status in FINAL_STATUSES

S = TaskStatus
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.CANCELLED, S.EXPIRED}),
    S.RUNNING: frozenset({S.COMPLETE, S.RETRY, S.FAILED, S.CANCELLED, S.TIMEOUT}),
    S.RETRY: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    **{final: frozenset() for final in FINAL_STATUSES},
}


class InvalidTransition(Exception):
    """A status change the lifecycle does not allow (a bug in the caller, never user input)."""


def check_transition(old: TaskStatus, new: TaskStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"{old.value} -> {new.value} is not an allowed transition")


def iso(ts: float | None) -> str | None:
    """Unix seconds as UTC ISO-8601 with a `Z`."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a task runs with, fixed at enqueue: the queue's settings with per-call overrides."""

    function: str  # digest of the queue's pickled function bundle
    retries: int = 3
    timeout: int = 3600
    ttl: int = 7200
    callback_url: str | None = None
    ray_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    gpu_types: list[str] = dataclasses.field(default_factory=list)
    #: Ray's max_calls for plain queues (None: Ray's default)
    max_calls: int | None = None
    #: `raybeam.Retries` backoff as [initial_delay, backoff_coefficient, max_delay]; None:
    #: the short default backoff
    backoff: list[float] | None = None


@dataclasses.dataclass(slots=True)
class TaskRecord:
    """One task. Plain data; the registry actor is its only writer."""

    id: str
    queue: str
    spec: TaskSpec
    status: TaskStatus = TaskStatus.PENDING
    created_at: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    updated_at: float = dataclasses.field(default_factory=time.time)
    container_id: str | None = None
    attempts: int = 0
    #: id of the live submission ("" between submissions); reports from any other are stale
    run: str = ""
    result: Any = None
    #: base64 of the pickled return value when it is not JSON
    result_blob: str | None = None
    #: where a large return value is stored instead of `result` / `result_blob` (SPEC §11)
    result_key: str | None = None
    failure_reason: str | None = None
    outputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    webhook: dict[str, Any] | None = None
    history: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    #: higher starts first among a queue's waiting tasks
    priority: int = 0
    #: unix seconds before which the task does not start (a delay or run_at); None: at once
    scheduled_for: float | None = None
    idempotency_key: str | None = None
    #: the task this one requeues, and the task that requeued this one
    retry_of: str | None = None
    retried_as: str | None = None
    #: the latest value the handler reported with context.progress(), and how many were stored
    progress: Any = None
    progress_seq: int = 0
    #: while RETRY: unix seconds when the next attempt may start
    next_attempt_at: float | None = None

    def __post_init__(self) -> None:
        if not self.history:
            self.history.append((self.status._value_, self.created_at))

    def is_live(self, run: str) -> bool:
        """`run` is this task's current submission, and the task can still change."""
        return self.run == run and not self.status.is_final

    def transition(self, new: TaskStatus, now: float | None = None) -> None:
        """Move to `new` through the transition table, stamping the time."""
        check_transition(self.status, new)
        now = time.time() if now is None else now
        self.status = new
        self.updated_at = now
        self.history.append((new._value_, now))  # `.value` is 5x slower
        if new is TaskStatus.RUNNING and self.started_at is None:
            self.started_at = now
        if new is not TaskStatus.RETRY:
            self.next_attempt_at = None
        if new.is_final:
            self.ended_at = now

    def to_json(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies, and this runs for every stored change
        data = {f.name: getattr(self, f.name) for f in _RECORD_FIELDS}
        data["spec"] = {f.name: getattr(self.spec, f.name) for f in _SPEC_FIELDS}
        data["status"] = self.status.value
        return data

    def stored(self) -> list[Any]:
        """The record as the journal stores it: its fields' values in `STORED_FIELDS` order,
        the spec as its cached JSON. Two thirds of the bytes of `to_json()`, encoded in a
        third of the time (the registry encodes a record at each of its changes)."""
        return [codec.frozen_json(self.spec), *_STORED_VALUES(self)]

    @classmethod
    def from_json(
        cls, data: dict[str, Any] | list[Any], specs: dict[str, TaskSpec] | None = None
    ) -> TaskRecord:
        """A record from `to_json()` or `stored()`. A stored list shorter than
        `STORED_FIELDS` (written before a field was added) gives the rest their defaults.
        Records read with one `specs` table share equal specs, as the records of a queue do
        when they are made."""
        if isinstance(data, list):
            if len(data) > len(STORED_FIELDS):
                raise ValueError(
                    f"a stored record has {len(data)} values; at most {len(STORED_FIELDS)} "
                    "are known (was it written by a newer raybeam?)"
                )
            data = dict(zip(STORED_FIELDS, data, strict=False))
        else:
            data = dict(data)
        if specs is None:
            data["spec"] = TaskSpec(**data["spec"])
        else:
            key = codec.canonical(data["spec"])
            spec = specs.get(key)
            if spec is None:
                spec = specs[key] = TaskSpec(**data["spec"])
            data["spec"] = spec
        data["status"] = TaskStatus(data["status"])
        data["history"] = [tuple(h) for h in data.get("history", [])]
        return cls(**data)

    def info(self, outputs: list[dict[str, Any]], stats: dict[str, int]) -> dict[str, Any]:
        """The public record of SPEC §3; `outputs` carry freshly signed links."""
        info: dict[str, Any] = {
            "id": self.id,
            "queue": self.queue,
            "status": self.status.value,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "updated_at": iso(self.updated_at),
            "container_id": self.container_id,
            "attempts": self.attempts,
            "result": self.result,
            "failure_reason": self.failure_reason,
            "outputs": outputs,
            "stats": stats,
            "priority": self.priority,
            "scheduled_for": iso(self.scheduled_for),
            "idempotency_key": self.idempotency_key,
            "retry_of": self.retry_of,
            "retried_as": self.retried_as,
            "progress": self.progress,
            "next_attempt_at": iso(self.next_attempt_at),
        }
        if self.spec.callback_url:
            info["webhook"] = self.webhook or {
                "url": self.spec.callback_url,
                "delivered": False,
                "attempts": [],
            }
        return info


_RECORD_FIELDS = dataclasses.fields(TaskRecord)
_SPEC_FIELDS = dataclasses.fields(TaskSpec)
#: the order of a stored record's values (`TaskRecord.stored`), read by position: a new
#: field goes at the end, never between, and none is ever removed or moved
STORED_FIELDS: tuple[str, ...] = (
    "spec", "id", "queue", "status", "created_at", "started_at", "ended_at", "updated_at",
    "container_id", "attempts", "run", "result", "result_blob", "result_key",
    "failure_reason", "outputs", "webhook", "history", "priority", "scheduled_for",
    "idempotency_key", "retry_of", "retried_as", "progress", "progress_seq", "next_attempt_at",
)  # fmt: skip
_STORED_VALUES = attrgetter(*STORED_FIELDS[1:])
