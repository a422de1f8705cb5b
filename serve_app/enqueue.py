"""`POST /taskqueue/{name}` and `POST /{name}`: enqueue one call, as `.put()` does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request, Security

from raybeam.enqueue import new_item
from serve_app.auth import authenticate, configured_tokens, token_header
from serve_app.errors import ApiError
from serve_app.registry import registry_of
from serve_app.schemas import EnqueueBody, Enqueued, errors

#: keys beside args/kwargs that are options, not arguments (special only in that form)
_OPTION_KEYS = frozenset({"callback_url", "idempotency_key", "priority", "delay", "run_at"})
_FORM_KEYS = frozenset({"args", "kwargs"}) | _OPTION_KEYS

router = APIRouter(tags=["enqueue"])

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": (
            '`{"args": [...], "kwargs": {...}}` with optional `callback_url`, '
            "`idempotency_key`, `priority`, `delay` (seconds) or `run_at` (ISO-8601) beside "
            "them, or any other JSON object taken whole as kwargs, or nothing. The header "
            "`Idempotency-Key` sets the idempotency key too"
        ),
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        EnqueueBody.model_json_schema(),
                        {"type": "object", "additionalProperties": True},
                    ]
                }
            }
        },
    }
}


def parse_body(raw: bytes) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """(args, kwargs, overrides) from an enqueue body (SPEC §3)."""
    if not raw.strip():
        return [], {}, {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "InvalidBody", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "InvalidBody",
            f'the body must be a JSON object, such as {{"kwargs": {{...}}}}; got a {type(body).__name__}',
        )
    if not (body.keys() <= _FORM_KEYS and body.keys() & {"args", "kwargs"}):
        return [], body, {}
    args, kwargs = body.get("args", []), body.get("kwargs", {})
    if not isinstance(args, list):
        raise ApiError(422, "InvalidArguments", '"args" must be a JSON array')
    if not isinstance(kwargs, dict):
        raise ApiError(422, "InvalidArguments", '"kwargs" must be a JSON object')
    overrides = {k: body[k] for k in _OPTION_KEYS if k in body}
    return args, kwargs, overrides


@router.post(
    "/taskqueue/{name}",
    response_model=Enqueued,
    openapi_extra=_BODY_DOC,
    responses=errors(400, 401, 403, 404, 408, 409, 413, 422, 429, 503),
    summary="Enqueue a task",
)
@router.post(
    "/{name}",
    response_model=Enqueued,
    openapi_extra=_BODY_DOC,
    responses=errors(400, 401, 403, 404, 408, 409, 413, 422, 429, 503),
    summary="Enqueue a task (short route)",
)
async def enqueue(
    name: str, request: Request, authorization: str | None = Security(token_header)
) -> Enqueued:
    # the guard capped the body and gave it a deadline; nothing of it is read before the token
    definition: dict[str, Any] | None = await registry_of(request).call("queue_info", name)
    # an unknown queue is only told apart from a private one once the token is right
    if definition is None or definition.get("authorized", True):
        authenticate(configured_tokens(request), authorization)
    if definition is None:
        raise ApiError(404, "QueueNotFound", f"no queue named {name!r} is registered")
    args, kwargs, overrides = parse_body(await request.body())
    key = request.headers.get("idempotency-key")
    if key is not None:
        if overrides.get("idempotency_key", key) != key:
            raise ApiError(
                400,
                "InvalidBody",
                "the Idempotency-Key header and the body's idempotency_key differ",
            )
        overrides["idempotency_key"] = key
    try:
        if overrides:  # a callback_url's host is resolved: not on the loop
            item = await asyncio.to_thread(new_item, definition, args, kwargs, overrides)
        else:
            item = new_item(definition, args, kwargs, overrides)
    except RecursionError:
        raise ApiError(422, "InvalidArguments", "the arguments are nested too deeply") from None
    ids: list[str] = await registry_of(request).call("submit", name, [item])
    return Enqueued(task_id=ids[0])
