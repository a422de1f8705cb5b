"""The checks every request passes before any route sees it (SPEC §10), as ASGI middleware.

In this order, from the headers alone: in open mode (no token configured) the `Host` must
name this machine or the configured public host, and an `Origin` must be the request's own
(so neither a web page the user visits nor DNS rebinding can reach the API); a route that
needs a token gets it checked (401 before a byte of the body is read); a declared body over
the route's cap is refused (413). Then the body is read through `BodyReader`, which refuses
it once it passes the cap (413) or takes longer than `RAYBEAM_BODY_TIMEOUT` (408).

Enqueue routes decide on their token themselves, since a queue with `authorized=False`
needs none; they check it before reading the body too (see enqueue.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from raybeam.config import settings
from serve_app.auth import authenticate, configured_tokens_of
from serve_app.dashboard.session import is_public as dashboard_page
from serve_app.errors import ApiError, BodyRefused, error_response
from serve_app.limits import MAX_BODY, MAX_ENQUEUE_BODY, body_timeout

#: routes anyone may call: liveness, signed output links, the API's own documents
PUBLIC = re.compile(r"^/(healthz|openapi\.json|docs|docs/oauth2-redirect|redoc|output/id/[^/]+)$")
#: `POST /taskqueue/{name}` and `POST /{name}`
ENQUEUE = re.compile(r"^/(taskqueue/)?[^/]+$")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def is_enqueue(method: str, path: str) -> bool:
    return method == "POST" and bool(ENQUEUE.match(path)) and not PUBLIC.match(path)


def is_loopback_name(host: str) -> bool:
    """`localhost` names and loopback addresses (IPv4-mapped ones included)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(host, port) of a `Host` value or an origin's netloc; None when it is malformed."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username is not None or parts.path:
        return None
    return parts.hostname.rstrip("."), port or _DEFAULT_PORTS.get(scheme, 80)


def _public() -> tuple[str, str, int] | None:
    """(scheme, host, port) of the API's public URL (`RAYBEAM_PUBLIC_URL`, else the bind)."""
    return _origin(settings().base_url)


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return None
    found = _host_port(parts.netloc, scheme)
    return (scheme, *found) if found else None


def open_mode_refusal(scope: Scope, headers: Headers) -> str | None:
    """Why a request may not reach an API that takes no token, or None when it may."""
    given = headers.get("host", "")
    host = _host_port(given, str(scope.get("scheme", "http")))
    public = _public()
    if host is None or not (is_loopback_name(host[0]) or (public and host[0] == public[1])):
        return (
            f"Host {given!r} is not this machine: with no RAYBEAM_AUTH_TOKENS the API answers "
            "only requests to a loopback name or to the host of RAYBEAM_PUBLIC_URL"
        )
    origin = headers.get("origin")
    if origin is None:
        return None
    seen = _origin(origin)  # None for "null" (sandboxed pages, files) and anything odd
    if seen is not None and (seen[1:] == _host_port(given, seen[0]) or seen == public):
        return None
    return (
        f"Origin {origin!r} is another origin: with no RAYBEAM_AUTH_TOKENS the API answers no "
        "request sent from another site's page"
    )


class BodyReader:
    """`receive` for the app: the body refused past `cap` bytes or after `deadline`."""

    def __init__(self, receive: Receive, cap: int, timeout: float) -> None:
        self.receive = receive
        self.cap = cap
        self.timeout = timeout
        self.deadline = asyncio.get_running_loop().time() + timeout
        self.size = 0
        self.done = False

    async def __call__(self) -> Message:
        if self.done:  # past the body: disconnects and the like, with no deadline
            return await self.receive()
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(self.receive(), remaining)
        except asyncio.TimeoutError:
            self.done = True
            raise BodyRefused(
                408,
                "RequestTimeout",
                f"the body did not arrive within {self.timeout:g} s (RAYBEAM_BODY_TIMEOUT)",
            ) from None
        if message["type"] != "http.request":
            self.done = True
            return message
        self.size += len(message.get("body", b""))
        if self.size > self.cap:
            self.done = True
            raise BodyRefused(413, "PayloadTooLarge", too_large(self.cap))
        self.done = not message.get("more_body", False)
        return message


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (HTTP/1.1: a Content-Length or chunked)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def too_large(cap: int) -> str:
    return f"the body is over {cap} bytes ({cap // 2**20} MiB), the most this route takes"


class Guard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = str(scope["method"]), str(scope["path"])
        enqueue = is_enqueue(method, path)
        cap = MAX_ENQUEUE_BODY if enqueue else MAX_BODY
        try:
            self.admit(scope, Headers(scope=scope), enqueue, cap)
        except ApiError as refusal:
            headers = {**(refusal.headers or {}), "Connection": "close"}
            response = error_response(refusal.status, refusal.error, refusal.detail, headers)
            await response(scope, receive, send)
            return
        if not has_body(scope):  # nothing to wait for: no deadline on a stream's receive
            await self.app(scope, receive, send)
            return
        await self.app(scope, BodyReader(receive, cap, body_timeout()), send)

    def admit(self, scope: Scope, headers: Headers, enqueue: bool, cap: int) -> None:
        """Raise an ApiError for a request that the headers already rule out."""
        tokens = configured_tokens_of(scope["app"])
        if not tokens:
            reason = open_mode_refusal(scope, headers)
            if reason is not None:
                raise ApiError(403, "Forbidden", reason)
        elif not (
            enqueue
            or PUBLIC.match(str(scope["path"]))
            or dashboard_page(str(scope["method"]), str(scope["path"]))
        ):
            authenticate(tokens, headers.get("authorization"))
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise ApiError(400, "InvalidBody", f"Content-Length {declared!r} is not a number")
            if int(declared) > cap:
                raise ApiError(413, "PayloadTooLarge", too_large(cap))
