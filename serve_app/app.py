"""The FastAPI application: routes that translate HTTP to registry calls (SPEC §3)."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI

from serve_app import dashboard, enqueue, errors, metrics, outputs, tasks
from serve_app.guard import Guard
from serve_app.limits import StreamSlots
from serve_app.registry import RayRegistry, RegistryClient
from serve_app.schemas import Health


def create_app(
    tokens: Sequence[str] | None = None, registry: RegistryClient | None = None
) -> FastAPI:
    """The HTTP API; tokens default to `RAYBEAM_AUTH_TOKENS`, the registry to the Ray actor.

    >>> app = create_app(tokens=["secret"])  # doctest: +SKIP
    """
    app = FastAPI(
        title="raybeam",
        summary="Enqueue tasks, follow them, fetch their outputs.",
        version="0.1.0",
    )
    # None: RAYBEAM_AUTH_TOKENS, read where the app runs (a Serve replica, not the deployer)
    app.state.auth_tokens = None if tokens is None else tuple(tokens)
    app.state.registry = registry if registry is not None else RayRegistry()
    app.state.streams = StreamSlots()
    errors.install(app)
    # auth, Host and Origin from the headers, then a capped body with a deadline (SPEC §10)
    app.add_middleware(Guard)
    # added after the guard, so it runs first: the dashboard's cookie becomes the
    # Authorization header the guard and every route check (SPEC §9)
    app.add_middleware(dashboard.CookieAuth)

    @app.get("/healthz", response_model=Health, tags=["service"], summary="Liveness")
    async def healthz() -> Health:
        return Health(status="ok")

    app.include_router(metrics.router)
    app.include_router(tasks.router)
    app.include_router(outputs.router)
    app.include_router(dashboard.dashboard_router())
    app.include_router(enqueue.router)  # last: `POST /{name}` matches any single segment
    return app
