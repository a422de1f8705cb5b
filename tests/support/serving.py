"""The session's one Ray Serve, shared by the HTTP test modules."""

from __future__ import annotations


def remove_app() -> None:
    """Remove the HTTP API and keep Serve running for the next module (`undeploy` would stop
    Serve too, and the next module would wait for its controller and proxy again)."""
    from ray import serve

    from serve_app.deployment import APP_NAME

    serve.delete(APP_NAME)
