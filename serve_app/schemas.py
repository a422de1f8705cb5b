"""Request and response models; they make the OpenAPI document describe every route."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from raybeam.record import TaskStatus


class EnqueueBody(BaseModel):
    """The explicit form of an enqueue body. Any other JSON object is taken whole as kwargs."""

    model_config = ConfigDict(extra="forbid")

    args: list[Any] = Field(default_factory=list, description="positional arguments")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments")
    callback_url: str | None = Field(
        default=None, description="webhook for this task, overriding the queue's"
    )
    idempotency_key: str | None = Field(
        default=None, description="the same key on the same queue returns the first task"
    )
    priority: int | None = Field(default=None, description="higher starts first")
    delay: float | None = Field(default=None, description="seconds before the task may start")
    run_at: str | None = Field(default=None, description="UTC ISO-8601 time to start at")


class Enqueued(BaseModel):
    task_id: str


class OutputFile(BaseModel):
    name: str
    url: str
    expires_in: int


class QueueStats(BaseModel):
    active_containers: int
    queue_depth: int = Field(description="the queue's tasks that are not final")


class WebhookAttempt(BaseModel):
    at: str
    status_code: int | None = None
    error: str | None = None


class Webhook(BaseModel):
    url: str
    delivered: bool
    attempts: list[WebhookAttempt]


class TaskRecord(BaseModel):
    """The task record of SPEC §3; `webhook` only on tasks with a callback."""

    id: str
    queue: str
    status: TaskStatus
    created_at: str = Field(description="UTC ISO-8601 with Z")
    started_at: str | None
    ended_at: str | None
    updated_at: str
    container_id: str | None
    attempts: int
    result: Any
    failure_reason: str | None
    outputs: list[OutputFile]
    stats: QueueStats
    webhook: Webhook | None = None
    priority: int = 0
    scheduled_for: str | None = Field(default=None, description="UTC ISO-8601 with Z")
    idempotency_key: str | None = None
    retry_of: str | None = None
    retried_as: str | None = None
    progress: Any = Field(default=None, description="the latest context.progress() value")
    next_attempt_at: str | None = Field(default=None, description="while RETRY")


class TaskPage(BaseModel):
    tasks: list[TaskRecord] = Field(description="newest first")
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class CancelBody(BaseModel):
    task_ids: list[str] = Field(max_length=10_000)


class RetryBody(BaseModel):
    """Requeue these final tasks, or the newest `limit` of `queue` with `status`."""

    model_config = ConfigDict(extra="forbid")

    task_ids: list[str] | None = Field(default=None, max_length=10_000)
    queue: str | None = None
    status: str | None = Field(default="FAILED", description="a final status; null for any")
    limit: int = Field(default=100, ge=1, le=10_000)


class Requeued(BaseModel):
    task_id: str = Field(description="the new task")
    retry_of: str = Field(description="the task it requeues")


class RequeuedPage(BaseModel):
    tasks: list[Requeued]


class Empty(BaseModel):
    pass


class Health(BaseModel):
    status: str


class Error(BaseModel):
    error: str
    detail: Any


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for these error codes."""
    text = {
        400: "the body is not a JSON object, or the callback_url is refused",
        401: "missing or wrong token",
        403: "the link is expired or tampered with, or (with no token configured) another Host or Origin",
        404: "no such queue, task or output",
        408: "the body took longer than RAYBEAM_BODY_TIMEOUT to arrive",
        409: "the idempotency key names a task with other arguments, or the task is not final",
        413: "the body is over 16 MiB (enqueue) or 1 MiB (other routes)",
        422: "the request or its arguments do not fit",
        429: "the queue holds max_pending_tasks unfinished tasks",
        503: "the task registry is not reachable, or this replica has RAYBEAM_MAX_STREAMS streams open",
    }
    return {code: {"model": Error, "description": text[code]} for code in codes}
