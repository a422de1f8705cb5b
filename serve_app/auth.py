"""Token checks (SPEC §3): `Authorization: Bearer <token>`, or `Basic` with the token itself,
base64 of the token, or base64 of `user:token`. Tokens come from `RAYBEAM_AUTH_TOKENS`.

Every route but `/healthz`, the signed output links and enqueue on an `authorized=False`
queue needs a token; the guard (guard.py) checks it from the headers before any body is
read. With no token configured the API is open, for this machine only: `deploy()` refuses
any other bind address unless told `insecure_no_auth`, and the guard answers 403 to requests
for another Host or from another Origin. Set `RAYBEAM_AUTH_TOKENS` to serve anyone else.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from typing import Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from raybeam.config import settings
from serve_app.errors import ApiError

#: documents the header in the OpenAPI document; the check itself is `authenticate`
token_header = APIKeyHeader(
    name="Authorization",
    scheme_name="token",
    description="`Bearer <token>`, or `Basic <token>`, `Basic base64(token)`, `Basic base64(user:token)`",
    auto_error=False,
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="raybeam"'}


def candidates(header: str) -> list[bytes]:
    """The strings an Authorization header may carry as its token."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value:
        return []
    raw = value.encode("latin-1", "replace")
    if scheme.lower() == "bearer":
        return [raw]
    if scheme.lower() != "basic":
        return []
    found = [raw]
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return found
    found.append(decoded)
    if b":" in decoded:
        found.append(decoded.partition(b":")[2])
    return found


def is_authorized(header: str | None, tokens: Sequence[str]) -> bool:
    """True when the header carries one of `tokens`; every comparison is constant-time."""
    if not header:
        return False
    matched = False
    for candidate in candidates(header):
        for token in tokens:
            # no short cut: how long this takes does not depend on which token matched
            matched |= hmac.compare_digest(candidate, token.encode())
    return matched


def authenticate(tokens: Sequence[str], header: str | None) -> None:
    """Raise a 401 ApiError unless the header carries a configured token (or none is configured)."""
    if not tokens:
        return
    if not header:
        raise ApiError(
            401,
            "Unauthorized",
            "missing token: send 'Authorization: Bearer <token>' with a token from RAYBEAM_AUTH_TOKENS",
            _CHALLENGE,
        )
    if not is_authorized(header, tokens):
        raise ApiError(
            401,
            "Unauthorized",
            "wrong token: the Authorization header carries no token from RAYBEAM_AUTH_TOKENS",
            _CHALLENGE,
        )


async def require_token(
    request: Request, authorization: str | None = Security(token_header)
) -> None:
    """A route dependency: 401 unless the request carries a configured token."""
    authenticate(configured_tokens(request), authorization)


def configured_tokens(request: Request) -> tuple[str, ...]:
    return configured_tokens_of(request.app)


def configured_tokens_of(app: Any) -> tuple[str, ...]:
    """The tokens `create_app` was given, else `RAYBEAM_AUTH_TOKENS` where the app runs."""
    tokens: tuple[str, ...] | None = app.state.auth_tokens
    return settings().auth_tokens if tokens is None else tokens
