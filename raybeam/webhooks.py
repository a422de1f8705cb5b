"""Webhooks (SPEC §4): the payload, its signature, delivery with retries, and `verify_webhook`.

Pure logic with no Ray in it: the registry calls `deliver()` on every final status and records
each attempt on the task through `on_attempt`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from raybeam.errors import RaybeamError

__all__ = [
    "FINAL_STATUSES",
    "DeliveryPolicy",
    "InvalidCallbackUrl",
    "InvalidWebhookSignature",
    "build_payload",
    "build_request",
    "deliver",
    "sign",
    "validate_callback_url",
    "verify_webhook",
]

logger = logging.getLogger("raybeam.webhooks")

FINAL_STATUSES = frozenset({"COMPLETE", "FAILED", "CANCELLED", "TIMEOUT", "EXPIRED"})

HEADER_TASK_ID = "X-Task-ID"
HEADER_STATUS = "X-Task-Status"
HEADER_TIMESTAMP = "X-Task-Timestamp"
HEADER_SIGNATURE = "X-Task-Signature"

# 408, 425 and 429 say "try again later"; other 4xx mean the request itself is wrong.
_RETRY_STATUS_CODES = frozenset({408, 425, 429})
# Errors raised before the request reached the receiver, so a retry cannot act twice.
_RETRY_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)


class InvalidWebhookSignature(RaybeamError, ValueError):
    """A webhook request whose headers, signature, timestamp or body cannot be trusted."""


class InvalidCallbackUrl(RaybeamError, ValueError):
    """A `callback_url` that is not an absolute http(s) URL with a host."""


def validate_callback_url(url: str | None) -> str | None:
    """Return `url` unchanged when it is None or an absolute http(s) URL with a host.

    >>> validate_callback_url("https://example.com/hook")
    'https://example.com/hook'
    """
    if url is None:
        return None
    if not isinstance(url, str):
        raise InvalidCallbackUrl(
            f"callback_url must be a string such as 'https://example.com/hook', "
            f"got {type(url).__name__}"
        )
    try:
        parts = urlsplit(url.strip())
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme.lower() not in ("http", "https"):
        raise InvalidCallbackUrl(
            f"callback_url {url!r} is not an http(s) URL; "
            "give an absolute URL such as 'https://example.com/hook'"
        )
    if not parts.hostname or not port_ok:
        raise InvalidCallbackUrl(
            f"callback_url {url!r} has no valid host and port; "
            "give an absolute URL such as 'https://example.com/hook'"
        )
    return url


def build_payload(
    task_id: str,
    status: str,
    result: Any,
    outputs: list[dict[str, Any]],
    failure_reason: str | None,
) -> dict[str, Any]:
    """The JSON payload of SPEC §4; `data` falls back to the first output's link."""
    data = result
    if result is None and outputs:
        data = {"url": outputs[0]["url"]}
    return {
        "task_id": task_id,
        "status": status,
        "data": data,
        "outputs": outputs,
        "failure_reason": failure_reason,
    }


def sign(key: bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `b"<timestamp>." + body` under `key`."""
    return hmac.new(key, str(int(timestamp)).encode() + b"." + body, hashlib.sha256).hexdigest()


def build_request(
    payload: dict[str, Any], key: bytes, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """The compact JSON body and the signed headers for one delivery of `payload`."""
    # default=str: a webhook with a stringified odd value beats no webhook at all.
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Content-Type": "application/json",
        HEADER_TASK_ID: str(payload.get("task_id", "")),
        HEADER_STATUS: str(payload.get("status", "")),
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(key, timestamp, body),
    }
    return body, headers


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    key: bytes | str,
    tolerance: int = 300,
) -> dict[str, Any]:
    """Check a raybeam webhook request and return its JSON payload.

    Pass the raw request body (not re-serialised JSON), the request headers (names in any
    case) and the signing key (`RAYBEAM_SIGNING_KEY`). Raises `InvalidWebhookSignature` when a
    header is missing, the signature does not match, the timestamp is more than `tolerance`
    seconds from now (a replay), or the body is not a JSON object.

    A FastAPI receiver::

        from fastapi import FastAPI, HTTPException, Request
        from raybeam.webhooks import InvalidWebhookSignature, verify_webhook

        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> dict[str, str]:
            try:
                event = verify_webhook(await request.body(), request.headers, SIGNING_KEY)
            except InvalidWebhookSignature as e:
                raise HTTPException(status_code=401, detail=str(e)) from e
            print(event["task_id"], event["status"], event["data"])
            return {"ok": "true"}
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    secret = key.encode() if isinstance(key, str) else bytes(key)
    lowered = {name.lower(): value for name, value in headers.items()}
    missing = [name for name in (HEADER_TIMESTAMP, HEADER_SIGNATURE) if name.lower() not in lowered]
    if missing:
        raise InvalidWebhookSignature(
            f"webhook request is missing header(s) {', '.join(missing)}; "
            "pass the request's headers exactly as received"
        )
    try:
        timestamp = int(lowered[HEADER_TIMESTAMP.lower()].strip())
    except ValueError:
        raise InvalidWebhookSignature(
            f"{HEADER_TIMESTAMP} must be unix seconds, got {lowered[HEADER_TIMESTAMP.lower()]!r}"
        ) from None
    expected = sign(secret, timestamp, raw)
    given = lowered[HEADER_SIGNATURE.lower()].strip()
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise InvalidWebhookSignature(
            f"{HEADER_SIGNATURE} does not match the body; check that the signing key is "
            "RAYBEAM_SIGNING_KEY and that the raw body is passed unchanged"
        )
    skew = abs(time.time() - timestamp)
    if skew > tolerance:
        raise InvalidWebhookSignature(
            f"{HEADER_TIMESTAMP} is {int(skew)} s from now, beyond the tolerance of "
            f"{tolerance} s; a replayed request, or a clock that needs syncing"
        )
    try:
        payload = json.loads(raw)
    except ValueError:
        raise InvalidWebhookSignature("webhook body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidWebhookSignature(
            f"webhook body must be a JSON object, got {type(payload).__name__}"
        )
    return payload


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard `deliver()` tries: attempts in all, and the first backoff (doubled each retry)."""

    attempts: int = 3
    backoff: float = 1.0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0


_DEFAULT_POLICY = DeliveryPolicy()


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _short_error(error: BaseException) -> str:
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}"[:300] if text else name


async def _record(
    on_attempt: Callable[[dict[str, Any]], Awaitable[None] | None], attempt: dict[str, Any]
) -> None:
    # A failing recorder must not stop the delivery nor reach the registry.
    try:
        maybe = on_attempt(attempt)
        if inspect.isawaitable(maybe):
            await maybe
    except Exception:
        logger.exception("recording webhook attempt %s failed", attempt)


async def deliver(
    url: str,
    payload: dict[str, Any],
    key: bytes,
    on_attempt: Callable[[dict[str, Any]], Awaitable[None] | None],
    policy: DeliveryPolicy = _DEFAULT_POLICY,
    client: httpx.AsyncClient | None = None,
) -> bool:
    """POST `payload` to `url`, retrying as SPEC §4 says; True once a 2xx answer arrives.

    Each attempt is passed to `on_attempt` as `{"at", "status_code"}` or `{"at", "error"}`.
    Never raises except `asyncio.CancelledError`; failures are logged and recorded.

    >>> asyncio.run(deliver(url, payload, key, attempts.append))  # doctest: +SKIP
    """
    timeout = httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.connect_timeout,
    )
    own_client = client is None
    http = client if client is not None else httpx.AsyncClient(timeout=timeout)
    task_id = payload.get("task_id")
    try:
        for attempt in range(1, max(1, policy.attempts) + 1):
            at = _now_iso()
            retry = False
            try:
                # Signed afresh each attempt so a late retry is not rejected as stale.
                body, headers = build_request(payload, key)
                response = await http.post(url, content=body, headers=headers, timeout=timeout)
            except _RETRY_ERRORS as e:
                record: dict[str, Any] = {"at": at, "error": _short_error(e)}
                retry = True
            except Exception as e:
                record = {"at": at, "error": _short_error(e)}
            else:
                code = response.status_code
                record = {"at": at, "status_code": code}
                if 200 <= code < 300:
                    await _record(on_attempt, record)
                    return True
                retry = code in _RETRY_STATUS_CODES or code >= 500
            await _record(on_attempt, record)
            logger.warning(
                "webhook for task %s to %s: attempt %d/%d failed (%s)",
                task_id,
                url,
                attempt,
                policy.attempts,
                record.get("error", record.get("status_code")),
            )
            if not retry or attempt >= policy.attempts:
                break
            await asyncio.sleep(policy.backoff * 2 ** (attempt - 1))
    finally:
        if own_client:
            try:
                await http.aclose()
            except Exception:
                logger.exception("closing the webhook HTTP client failed")
    logger.error("webhook for task %s to %s was not delivered", task_id, url)
    return False
