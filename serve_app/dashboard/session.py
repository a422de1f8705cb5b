"""The dashboard's sign-in (SPEC §9): a token asked once, kept in a cookie, checked like a header.

`POST /dashboard/login` checks the token and stores it in the `raybeam_token` cookie
(`HttpOnly`, so no script reads it back; `SameSite=Strict`, so no other site's page sends
it; `Path=/`, since the pages call `/v2/task/...`). `CookieAuth`, an ASGI middleware outside
the guard, hands the cookie's token on as `Authorization: Bearer <token>`, so the guard,
`require_token` and every route check it as they check a header: the auth layer needs no
second path. It does so only for the routes the pages call, and for a request that changes
state (anything but GET and HEAD) only when its `Origin` is the request's own origin or
that of `RAYBEAM_PUBLIC_URL`, and for a read only when the browser does not say it comes
from another site's page (`Sec-Fetch-Site`); else it answers 403 (a page on another port of
the same host is "same-site", so SameSite alone does not stop it). A request that brings
its own `Authorization` header is passed on untouched.

The pages and their assets hold no data (it comes from the JSON routes), so they are public:
`is_public` names them for the guard.
"""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from raybeam.config import settings
from serve_app.auth import configured_tokens_of
from serve_app.errors import error_response

#: the cookie that holds the token (base64url of it: any token fits a cookie's value)
COOKIE = "raybeam_token"
#: pages and assets: GET and HEAD need no token
PAGES = re.compile(r"^/dashboard(/task/[^/]+|/static/[A-Za-z0-9_.-]+)?$")
#: sign-in and sign-out: POST needs no token (login checks the one it is given)
SIGN_IN = re.compile(r"^/dashboard/(login|logout)$")
#: the routes the cookie authenticates: the dashboard's data and the task routes it calls
COOKIE_ROUTES = re.compile(r"^/(dashboard/api/|v2/task/)")
SAFE_METHODS = frozenset({"GET", "HEAD"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def is_public(method: str, path: str) -> bool:
    """Whether a dashboard request needs no token: its pages, assets, sign-in and sign-out."""
    if method in SAFE_METHODS:
        return PAGES.match(path) is not None
    return method == "POST" and SIGN_IN.match(path) is not None


def encode(token: str) -> str:
    """base64url without padding: only characters a cookie value takes unquoted."""
    return base64.urlsafe_b64encode(token.encode()).decode("ascii").rstrip("=")


def decode(value: str) -> str | None:
    try:
        raw = value.encode("ascii") + b"=" * (-len(value) % 4)
        return base64.urlsafe_b64decode(raw).decode()
    except (binascii.Error, ValueError):
        return None


def cookie_token(headers: Headers) -> str | None:
    """The token the request's cookie carries, None without one (or with a malformed one)."""
    raw = headers.get("cookie")
    if not raw:
        return None
    value = cookie_parser(raw).get(COOKIE)
    return decode(value) if value else None


def _origin(url: str) -> Origin | None:
    """(scheme, host, port) of a URL or an `Origin` value; None for `null` and anything odd."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.rstrip("."), port or _DEFAULT_PORTS[scheme]


def own_origins(scope: Scope, headers: Headers) -> set[Origin]:
    """The origins a page of this API has: the request's own (its scheme and `Host`) and
    that of `RAYBEAM_PUBLIC_URL` (behind a proxy the two differ)."""
    found = set()
    own = _origin(f"{scope.get('scheme', 'http')}://{headers.get('host', '')}")
    if own is not None:
        found.add(own)
    public = _origin(settings().base_url)
    if public is not None:
        found.add(public)
    return found


def same_origin(scope: Scope, headers: Headers) -> bool:
    """Whether the request comes from a page of this API: an `Origin` that is one of
    `own_origins`, and a `Sec-Fetch-Site` (where the browser sends one) of `same-origin`."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site != "same-origin":
        return False
    origin = headers.get("origin")
    seen = None if origin is None else _origin(origin)
    return seen is not None and seen in own_origins(scope, headers)


def is_https(scope: Scope, headers: Headers) -> bool:
    """Whether the browser reached this API over https: the request's own scheme, or (behind
    a proxy that ends TLS) `RAYBEAM_PUBLIC_URL` is https and names the request's host."""
    if scope.get("scheme") == "https":
        return True
    public = _origin(settings().base_url)
    own = _origin(f"http://{headers.get('host', '')}")
    return public is not None and public[0] == "https" and own is not None and own[1] == public[1]


def set_token_cookie(response: Response, token: str, secure: bool) -> None:
    """Keep `token` for this browser session: HttpOnly, SameSite=Strict, Secure over https."""
    response.set_cookie(
        COOKIE, encode(token), path="/", httponly=True, samesite="strict", secure=secure
    )


def clear_token_cookie(response: Response, secure: bool) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure)


CROSS_ORIGIN = (
    "this request carries the dashboard's cookie but does not come from the dashboard's own "
    "page: a request that changes state needs an Origin equal to this API's origin; other "
    "clients send 'Authorization: Bearer <token>' instead of the cookie"
)


class CookieAuth:
    """Presents the dashboard cookie's token as an `Authorization` header (see the module's
    docstring). Add it after the guard (`app.add_middleware` wraps what came before), so it
    runs first; added inside the guard it would do nothing, and cookie requests get 401."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and COOKIE_ROUTES.match(str(scope["path"])):
            headers = Headers(scope=scope)
            token = cookie_token(headers)
            if (
                token is not None
                and "authorization" not in headers
                and configured_tokens_of(scope["app"])
            ):
                if not _from_dashboard(scope, headers):
                    response = error_response(403, "Forbidden", CROSS_ORIGIN)
                    await response(scope, receive, send)
                    return
                scope = dict(scope)
                scope["headers"] = [*scope["headers"], (b"authorization", _bearer(token))]
        await self.app(scope, receive, send)


def _from_dashboard(scope: Scope, headers: Headers) -> bool:
    """A request the cookie may authenticate: a state change only from this origin; a read
    also from the address bar, but not from another site's page (an `<img>` or a link on a
    page of another port of this host sends the cookie as well)."""
    if scope["method"] not in SAFE_METHODS:
        return same_origin(scope, headers)
    return headers.get("sec-fetch-site", "none") in ("same-origin", "none")


def _bearer(token: str) -> bytes:
    # headers are latin-1; a token outside it cannot match a configured one anyway
    return b"Bearer " + token.encode("latin-1", "replace")
