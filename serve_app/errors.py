"""JSON errors: every answer that is not a success is `{"error": ..., "detail": ...}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from raybeam.errors import (
    IdempotencyConflict,
    InvalidArguments,
    InvalidConfiguration,
    QueueFull,
    QueueNotFound,
    RaybeamError,
    StorageInUse,
    TaskNotFinal,
    TaskNotFound,
)
from raybeam.webhooks import InvalidCallbackUrl

log = logging.getLogger("raybeam.http")

#: how each raybeam error reads over HTTP
STATUS_OF: tuple[tuple[type[RaybeamError], int], ...] = (
    (QueueNotFound, 404),
    (TaskNotFound, 404),
    (QueueFull, 429),
    (InvalidArguments, 422),
    (InvalidConfiguration, 422),
    (InvalidCallbackUrl, 400),
    (IdempotencyConflict, 409),
    (TaskNotFinal, 409),
    (StorageInUse, 503),
)


class ApiError(Exception):
    """An answer other than success, raised anywhere in a route."""

    def __init__(
        self, status: int, error: str, detail: Any, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


class BodyRefused(HTTPException):
    """A body refused while it is read: too large (413) or too slow (408). An HTTPException,
    which FastAPI's own body parsing passes on unchanged (it turns other errors into 400)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(status, detail, {"Connection": "close"})
        self.error = error


def error_response(
    status: int, error: str, detail: Any, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.error, exc.detail, exc.headers)


async def _raybeam_error(request: Request, exc: Exception) -> Response:
    for kind, status in STATUS_OF:
        if isinstance(exc, kind):
            return error_response(status, type(exc).__name__, str(exc))
    log.error("unexpected raybeam error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, type(exc).__name__, str(exc))


async def _body_refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyRefused)
    return error_response(exc.status_code, exc.error, exc.detail, dict(exc.headers or {}))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, error, exc.detail, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # only these keys: the offending input itself may not be JSON-serialisable
    detail = [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    return error_response(422, "ValidationError", detail)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "InternalError", "the server failed on this request; see its log")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(BodyRefused, _body_refused)
    app.add_exception_handler(RaybeamError, _raybeam_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
