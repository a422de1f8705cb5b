"""`/v2/task/...`: read, list, cancel and follow tasks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import ray
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from raybeam.record import TaskStatus
from serve_app.auth import require_token
from serve_app.errors import ApiError
from serve_app.limits import STREAM_RETRY_AFTER, StreamSlots, max_streams
from serve_app.registry import registry_of
from serve_app.schemas import (
    CancelBody,
    Empty,
    RequeuedPage,
    RetryBody,
    TaskPage,
    TaskRecord,
    errors,
)

log = logging.getLogger("raybeam.http")

#: seconds between keep-alive comments on an idle event stream
KEEPALIVE = 15.0

router = APIRouter(prefix="/v2/task", tags=["tasks"], dependencies=[Depends(require_token)])


async def _record(request: Request, task_id: str) -> dict[str, Any]:
    record: dict[str, Any] | None = await registry_of(request).call("get", task_id)
    if record is None:
        raise ApiError(404, "TaskNotFound", f"no task with id {task_id!r}")
    return record


@router.get("/", response_model=TaskPage, responses=errors(401, 422, 503), summary="List tasks")
async def list_tasks(
    request: Request,
    queue: str | None = None,
    status: str | None = Query(None, description="a status name, such as PENDING or COMPLETE"),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, description="`next_cursor` of the previous page"),
) -> JSONResponse:
    wanted = None
    if status is not None:
        try:
            wanted = TaskStatus.parse(status).value
        except ValueError as exc:
            raise ApiError(422, "ValidationError", str(exc)) from None
    records, next_cursor = await registry_of(request).call("list", queue, wanted, limit, cursor)
    return JSONResponse({"tasks": records, "next_cursor": next_cursor})


@router.delete(
    "/cancel/",
    response_model=Empty,
    responses=errors(401, 408, 413, 422, 503),
    summary="Cancel tasks",
)
async def cancel(request: Request, body: CancelBody) -> dict[str, Any]:
    if body.task_ids:
        await registry_of(request).call("cancel", body.task_ids)
    return {}


@router.post(
    "/retry/",
    response_model=RequeuedPage,
    responses=errors(401, 404, 408, 409, 413, 422, 429, 503),
    summary="Requeue final tasks as new ones",
)
async def retry(request: Request, body: RetryBody) -> dict[str, Any]:
    status = None
    if body.status is not None:
        try:
            status = TaskStatus.parse(body.status)
        except ValueError as exc:
            raise ApiError(422, "ValidationError", str(exc)) from None
        if not status.is_final:
            raise ApiError(
                422, "ValidationError", f"only final tasks can be requeued, not {status.value}"
            )
    if body.task_ids is None and body.queue is None and status is None:
        raise ApiError(422, "ValidationError", 'give "task_ids", or "queue" and/or "status"')
    made = await registry_of(request).call(
        "retry_tasks", body.task_ids, body.queue, status.value if status else None, body.limit
    )
    return {"tasks": made}


@router.get(
    "/{task_id}/", response_model=TaskRecord, responses=errors(401, 404, 503), summary="Get a task"
)
async def get_task(request: Request, task_id: str) -> JSONResponse:
    return JSONResponse(await _record(request, task_id))


@router.get(
    "/{task_id}/subscribe",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "server-sent `status` events, each with the task record as data",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(401, 404, 503),
    },
    summary="Follow a task's status",
)
async def subscribe(request: Request, task_id: str) -> StreamingResponse:
    slots: StreamSlots = request.app.state.streams
    if not slots.take():
        raise ApiError(
            503,
            "TooManyStreams",
            f"this replica has {max_streams()} event streams open (RAYBEAM_MAX_STREAMS); "
            f"try again in {STREAM_RETRY_AFTER} s, or poll GET /v2/task/{{task_id}}/",
            {"Retry-After": str(STREAM_RETRY_AFTER)},
        )
    try:
        first = await _record(request, task_id)
    except BaseException:
        slots.give_back()
        raise
    return _Stream(
        slots,
        _events(request, first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _Stream(StreamingResponse):
    """An event stream that holds one of the replica's stream slots until it ends, however
    it ends (the task final, the client gone)."""

    def __init__(self, slots: StreamSlots, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.give_back()


def _event(record: dict[str, Any], kind: str = "status") -> str:
    return f"event: {kind}\ndata: {json.dumps(record)}\n\n"


async def _events(request: Request, record: dict[str, Any]) -> AsyncIterator[str]:
    """A `status` event at once, then one per change: a `progress` event when a new
    progress value is stored (before the `status` event of a change that came with it)."""
    yield _event(record)
    registry = registry_of(request)
    seen = record["status"]
    while not TaskStatus(record["status"]).is_final:
        try:
            latest = await registry.call("watch", record["id"], seen, KEEPALIVE)
        except ray.exceptions.TaskCancelledError:  # the client went away
            return
        except Exception as exc:  # the answer has started: the stream can only say so and end
            log.warning("event stream of task %s ended early: %s", record["id"], exc)
            yield f"event: error\ndata: {json.dumps({'error': type(exc).__name__, 'detail': str(exc)})}\n\n"
            return
        if latest is None:
            return
        seen = latest.pop("version", None) or latest["status"]
        progressed = latest.get("progress") != record.get("progress")
        changed = (latest["status"], latest["updated_at"]) != (
            record["status"],
            record["updated_at"],
        )
        if not (progressed or changed):
            yield ": keep-alive\n\n"
            continue
        record = latest
        if progressed:
            yield _event(record, "progress")
        if changed:
            yield _event(record)
