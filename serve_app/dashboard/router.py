"""`/dashboard`: the web pages of SPEC §9 and the JSON they need beyond `/v2/task/...`.

The pages are static files (package data, no build step, nothing from another host) that
fetch their data: queue rows from `GET /dashboard/api/queues`, task lists from
`GET /v2/task/`, one task from `GET /dashboard/api/task/{id}` (the record, its status
history and attempts), and act through `DELETE /v2/task/cancel/` and `POST /v2/task/retry/`.
Each poll reads one page of tasks (`limit`, default 50) and the registry's counts, never the
whole task table, so a registry holding 100k tasks costs each open page what it costs one.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from serve_app.auth import configured_tokens, is_authorized, require_token
from serve_app.dashboard.session import (
    clear_token_cookie,
    is_https,
    same_origin,
    set_token_cookie,
)
from serve_app.dashboard.summary import Throughput, attempts, counters, history_rows, queue_rows
from serve_app.errors import ApiError
from serve_app.registry import RegistryClient, registry_of
from serve_app.schemas import errors

#: what the pages may load and where they may send requests: this origin only (output
#: images may come from the storage's signed links, on another host)
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: https: http:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
NO_STORE = {"Cache-Control": "no-store"}
STATIC = resources.files("serve_app.dashboard") / "static"


class Login(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _assets() -> dict[str, Asset]:
    found = {}
    for entry in STATIC.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            body = entry.read_bytes()
            media_type = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if media_type.startswith("text/") or media_type.endswith("javascript"):
                media_type += "; charset=utf-8"
            digest = hashlib.sha256(body).hexdigest()[:16]
            found[entry.name] = Asset(body, media_type, f'"{digest}"')
    return found


def _serve(request: Request, asset: Asset) -> Response:
    headers = {**PAGE_HEADERS, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


#: a replica reads the counts at most once every this many times as long as a read took,
#: so it holds the registry at most 1/COST_SHARE of its time (150 ms at 100k tasks: 3 s)
COST_SHARE = 20


class SharedCounts:
    """The registry's counts (its `metrics()`: one pass over every task it holds), read at
    most once every `ttl` seconds by this replica however many pages poll it, and less often
    when a read is slow (`COST_SHARE`); polls that arrive during a read share it. Each read
    is also a throughput sample."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.base_ttl = self.ttl = ttl
        self.clock = clock
        self.throughput = Throughput(clock)
        self.read: tuple[RegistryClient, float, dict[str, Any]] | None = None
        self.pending: asyncio.Task[dict[str, Any]] | None = None

    async def get(self, registry: RegistryClient) -> dict[str, Any]:
        if self.read is not None:
            owner, at, value = self.read
            if owner is registry and self.clock() - at < self.ttl:
                return value
        pending = self.pending
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = self.pending = asyncio.ensure_future(self._read(registry))
        # shielded: a poll that goes away leaves the read to the others
        return await asyncio.shield(pending)

    async def _read(self, registry: RegistryClient) -> dict[str, Any]:
        try:
            began = self.clock()
            value: dict[str, Any] = await registry.call("metrics")
            self.ttl = max(self.base_ttl, COST_SHARE * (self.clock() - began))
            self.read = (registry, self.clock(), value)
            self.throughput.observe(counters(value))
            return value
        finally:
            self.pending = None


def dashboard_router(poll_seconds: float = 2.0) -> APIRouter:
    """The dashboard's routes; the pages poll every `poll_seconds` while they are visible.

    >>> app.include_router(dashboard_router())  # doctest: +SKIP
    """
    assets = _assets()
    counts = SharedCounts(ttl=poll_seconds / 2)
    router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)
    data = APIRouter(dependencies=[Depends(require_token)])

    @router.get("")
    async def dashboard(request: Request) -> Response:
        return _serve(request, assets["dashboard.html"])

    @router.get("/task/{task_id}")
    async def task_page(request: Request, task_id: str) -> Response:
        return _serve(request, assets["task.html"])

    @router.get("/static/{name}")
    async def static(request: Request, name: str) -> Response:
        asset = assets.get(name)
        if asset is None or name.endswith(".html"):
            raise ApiError(404, "NotFound", f"the dashboard has no file {name!r}")
        return _serve(request, asset)

    @router.post("/login", responses=errors(401, 403, 422))
    async def login(request: Request, body: Login) -> JSONResponse:
        _same_origin(request)
        tokens = configured_tokens(request)
        if not tokens:
            return JSONResponse({"signed_in": True, "open": True}, headers=NO_STORE)
        if not is_authorized(f"Bearer {body.token}", tokens):
            raise ApiError(401, "Unauthorized", "wrong token: it is none of RAYBEAM_AUTH_TOKENS")
        response = JSONResponse({"signed_in": True, "open": False}, headers=NO_STORE)
        set_token_cookie(response, body.token, secure=is_https(request.scope, request.headers))
        return response

    @router.post("/logout", responses=errors(403))
    async def logout(request: Request) -> JSONResponse:
        _same_origin(request)
        response = JSONResponse({"signed_in": False}, headers=NO_STORE)
        clear_token_cookie(response, secure=is_https(request.scope, request.headers))
        return response

    @data.get("/api/queues", responses=errors(401, 503))
    async def queues(request: Request) -> JSONResponse:
        metrics = await counts.get(registry_of(request))
        body = {
            "queues": queue_rows(metrics, counts.throughput),
            "throughput_span_s": round(counts.throughput.span(), 1),
            "poll_seconds": poll_seconds,
            "open": not configured_tokens(request),
        }
        return JSONResponse(body, headers=NO_STORE)

    @data.get("/api/task/{task_id}", responses=errors(401, 404, 503))
    async def task(request: Request, task_id: str) -> JSONResponse:
        registry = registry_of(request)
        record, history = await asyncio.gather(
            registry.call("get", task_id), registry.call("history", task_id)
        )
        if record is None or history is None:
            raise ApiError(404, "TaskNotFound", f"no task with id {task_id!r}")
        body = {
            "task": record,
            "history": history_rows(history),
            "attempts": attempts(history, record.get("failure_reason")),
            "poll_seconds": poll_seconds,
            "open": not configured_tokens(request),
        }
        return JSONResponse(body, headers=NO_STORE)

    router.include_router(data)
    return router


def _same_origin(request: Request) -> None:
    if not same_origin(request.scope, request.headers):
        raise ApiError(
            403,
            "Forbidden",
            "sign in from the dashboard's own page: this request's Origin is not this API's",
        )
