"""`GET /metrics`: Prometheus text of the registry's counts and latency histograms."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from raybeam.middleware.metrics import render
from serve_app.auth import require_token
from serve_app.registry import registry_of
from serve_app.schemas import errors

router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(require_token)],
    responses={200: {"content": {"text/plain": {}}}, **errors(401, 503)},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> PlainTextResponse:
    data = await registry_of(request).call("metrics")
    return PlainTextResponse(render(data), media_type="text/plain; version=0.0.4; charset=utf-8")
