"""The Ray Serve binding of the HTTP API, and `deploy()` / `undeploy()` for the CLI.

`app` is what `serve deploy serve_app/serve_config.yaml` (import path
`serve_app.deployment:app`) runs; its replicas read the settings from their environment.
`deploy()` runs the same deployment with the caller's settings passed to the replicas.
"""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.schema import LoggingConfig

from raybeam import connection
from raybeam.config import Settings, settings
from serve_app.app import create_app

log = logging.getLogger("raybeam.http")

#: the Serve application's name
APP_NAME = "raybeam"
#: access logs are off unless a Serve config turns them on
QUIET = LoggingConfig(enable_access_log=False, log_level="WARNING")

api = create_app()


@serve.deployment(
    name="raybeam_http",
    ray_actor_options={"num_cpus": 0},
    logging_config=QUIET,
    # handlers mostly wait on the registry: let a replica hold many requests at once
    max_ongoing_requests=64,
)
@serve.ingress(api)
class HTTPAPI:
    def __init__(self) -> None:
        if not settings().auth_tokens:
            log.warning(
                "RAYBEAM_AUTH_TOKENS is not set: the HTTP API accepts requests without a token"
            )

    async def check_health(self) -> None:
        # Serve calls this every few seconds: it also starts the registry again if it died,
        # so unfinished tasks resume even when no client calls in. The HTTP API itself stays
        # healthy while the registry is away (its routes answer 503 meanwhile).
        try:
            await connection.acall("ping")
        except Exception:
            log.warning("the task registry did not answer a health check", exc_info=True)


app = HTTPAPI.bind()  # type: ignore[attr-defined]


def replica_env(s: Settings, host: str, port: int) -> dict[str, str]:
    """The caller's settings as the environment of the HTTP replicas."""
    env = {
        "RAYBEAM_STORAGE": s.storage_url,  # resolved here: replicas run in another folder
        "RAYBEAM_AUTH_TOKENS": ",".join(s.auth_tokens),
        "RAYBEAM_SIGNING_KEY": s.signing_key,
        "RAYBEAM_PUBLIC_URL": s.public_url,
        "RAYBEAM_HTTP_HOST": host,
        "RAYBEAM_HTTP_PORT": str(port),
        "RAYBEAM_OUTPUT_URL_EXPIRES": str(s.output_url_expires),
    }
    return {k: v for k, v in env.items() if v}


def deploy(host: str | None = None, port: int | None = None, blocking: bool = False) -> str:
    """Serve the HTTP API on the connected Ray cluster; returns its URL.

    >>> deploy("127.0.0.1", 8000)  # doctest: +SKIP
    'http://127.0.0.1:8000'
    """
    s = settings()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's progress chatter
    host = host or s.http_host
    port = port or s.http_port
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET)
    bound = HTTPAPI.options(  # type: ignore[attr-defined]
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": replica_env(s, host, port)}}
    ).bind()
    url = f"http://{host}:{port}"
    serve.run(bound, name=APP_NAME, route_prefix="/", logging_config=QUIET, blocking=blocking)
    return url


def undeploy() -> None:
    """Remove the HTTP API; stop Serve too when no other application is left on it."""
    serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()  # type: ignore[no-untyped-call]
