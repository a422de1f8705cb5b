"""The Ray Serve binding of the HTTP API, and `deploy()` / `undeploy()` for the CLI.

`app` is what `serve deploy serve_app/serve_config.yaml` (import path
`serve_app.deployment:app`) runs; its replicas read the settings from their environment.
`deploy()` runs the same deployment with the caller's settings passed to the replicas.
"""

from __future__ import annotations

import ipaddress
import logging
import os

from ray import serve
from ray.serve import Application
from ray.serve.schema import LoggingConfig

from raybeam import connection, keys
from raybeam.config import Settings, settings
from raybeam.destinations import ALLOWED_NETWORKS_ENV
from raybeam.errors import InvalidConfiguration
from raybeam.webhooks import TIMEOUT_ENV
from serve_app import limits
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
    # Handlers mostly wait on the registry, and an event stream or a slow body holds its
    # slot for long: room for every stream and as many other requests beside (SPEC §10).
    max_ongoing_requests=limits.max_ongoing_requests(),
    # a replica told to stop looks for its last requests to end every quarter second, not
    # every 2 s (Ray's default): a redeploy or shutdown waits for them, not for the clock
    graceful_shutdown_wait_loop_s=0.25,
)
@serve.ingress(api)
class HTTPAPI:
    def __init__(self) -> None:
        # tokens and keys come from Ray's key-value store (published by the deployer), never
        # through runtime_env, which Ray's dashboard shows
        keys.adopt_secrets()
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
        "RAYBEAM_PUBLIC_URL": s.public_url,
        "RAYBEAM_HTTP_HOST": host,
        "RAYBEAM_HTTP_PORT": str(port),
        "RAYBEAM_OUTPUT_URL_EXPIRES": str(s.output_url_expires),
    }
    for name in (limits.BODY_TIMEOUT_ENV, limits.MAX_STREAMS_ENV, TIMEOUT_ENV):
        env[name] = os.environ.get(name, "")
    found = {k: v for k, v in env.items() if v}
    # even when empty: the caller's rule, not whatever the cluster's processes inherited
    found[ALLOWED_NETWORKS_ENV] = os.environ.get(ALLOWED_NETWORKS_ENV, "")
    return found


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address: a bind that only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(s: Settings, host: str, insecure_no_auth: bool) -> None:
    """Refuse to serve an open API (no token configured) beyond this machine (SPEC §10)."""
    if s.auth_tokens or insecure_no_auth or is_loopback(host):
        return
    raise InvalidConfiguration(
        f"refusing to serve the HTTP API on {host} with no RAYBEAM_AUTH_TOKENS: anyone who can "
        "reach that address could enqueue work and read every task. Set RAYBEAM_AUTH_TOKENS, "
        "bind 127.0.0.1, or pass --insecure-no-auth if the network itself is trusted"
    )


def deploy(
    host: str | None = None,
    port: int | None = None,
    blocking: bool = False,
    insecure_no_auth: bool = False,
) -> str:
    """Serve the HTTP API on the connected Ray cluster; returns its URL.

    With no `RAYBEAM_AUTH_TOKENS` it binds only a loopback address, unless `insecure_no_auth`.

    >>> deploy("127.0.0.1", 8000)  # doctest: +SKIP
    'http://127.0.0.1:8000'
    """
    s = settings()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's progress chatter
    host = host or s.http_host
    port = port or s.http_port
    check_bind(s, host, insecure_no_auth)
    connection.ensure_ray()
    keys.publish_secrets(s)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET)
    bound = HTTPAPI.options(  # type: ignore[attr-defined]
        max_ongoing_requests=limits.max_ongoing_requests(),
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": replica_env(s, host, port)}},
    ).bind()
    url = f"http://{host}:{port}"
    serve.run(bound, name=APP_NAME, route_prefix="/", logging_config=QUIET, blocking=blocking)
    return url


def undeploy() -> None:
    """Remove the HTTP API; stop Serve too when no other application is left on it."""
    serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()  # type: ignore[no-untyped-call]


def build_app(args: dict[str, str]) -> Application:
    """The HTTP API with the queues of `args["app"]` registered, for Serve config files
    (`serve deploy`, KubeRay's `serveConfigV2`): what `raybeam serve app.py` deploys.

    Serve calls it once per deploy, inside the cluster, with the application's `args`:

        import_path: serve_app.deployment:build_app
        args: {app: /home/ray/app/app.py}
    """
    from raybeam.cli import find_queues, load_app

    path = args.get("app")
    unknown = sorted(set(args) - {"app"})
    if not isinstance(path, str) or unknown:
        raise InvalidConfiguration(
            "serve_app.deployment:build_app takes args {app: <a Python file that defines "
            f"@task_queue queues>}}, got keys {sorted(args)}"
        )
    queues = find_queues(load_app(path))
    if not queues:
        raise InvalidConfiguration(f"{path} defines no @task_queue; nothing to serve")
    s = settings()
    check_bind(s, s.http_host, insecure_no_auth=False)
    connection.ensure_ray()
    for queue in queues:
        queue.register()
    bound: Application = HTTPAPI.bind()  # type: ignore[attr-defined]
    return bound
