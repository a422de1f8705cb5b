"""Webhooks (SPEC §4, §10): the payload, its signature, bounded delivery with retries, and
`verify_webhook`.

Pure logic with no Ray in it: the webhook sender (raybeam/sender.py, an actor of its own, so
no receiver can slow or crash the registry) runs `attempts()` for each final status, and the
registry records each attempt on the task. An attempt goes only to an address the callback
rule allows (raybeam/destinations.py), checked on the addresses it then connects to; it
follows no redirect, reads at most `MAX_ANSWER` bytes of the answer and never decompresses
it, and ends after `RAYBEAM_WEBHOOK_TIMEOUT` seconds in all, however the receiver drips.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from raybeam.config import positive_env
from raybeam.destinations import (
    NOT_ALLOWED,
    DestinationLimits,
    InvalidCallbackUrl,
    resolve_destination,
    validate_callback_url,
)
from raybeam.errors import RaybeamError

__all__ = [
    "FINAL_STATUSES",
    "DeliveryPolicy",
    "DestinationLimits",
    "InvalidCallbackUrl",
    "InvalidWebhookSignature",
    "attempts",
    "build_payload",
    "build_request",
    "deliver",
    "may_retry",
    "new_client",
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


_RETRY_ERROR_NAMES = frozenset(cls.__name__ for cls in _RETRY_ERRORS)


def may_retry(attempt: dict[str, Any]) -> bool:
    """Whether an attempt, as recorded on the task, is one that SPEC §4 tries again after:
    a connection error, 408, 425, 429 or 5xx. The record alone decides, so a registry that
    restarts knows which deliveries ended and which were cut short.

    >>> may_retry({"at": "...", "status_code": 503}), may_retry({"at": "...", "error": "ReadTimeout"})
    (True, False)
    """
    code = attempt.get("status_code")
    if isinstance(code, int):
        return code in _RETRY_STATUS_CODES or code >= 500
    error = attempt.get("error")
    return isinstance(error, str) and error.split(":", 1)[0] in _RETRY_ERROR_NAMES


class InvalidWebhookSignature(RaybeamError, ValueError):
    """A webhook request whose headers, signature, timestamp or body cannot be trusted."""


def build_payload(
    task_id: str,
    status: str,
    result: Any,
    outputs: list[dict[str, Any]],
    failure_reason: str | None,
    progress: Any = None,
) -> dict[str, Any]:
    """The JSON payload of SPEC §4 (with the last progress value, SPEC §8); `data` falls
    back to the first output's link."""
    data = result
    if result is None and outputs:
        data = {"url": outputs[0]["url"]}
    return {
        "task_id": task_id,
        "status": status,
        "data": data,
        "outputs": outputs,
        "failure_reason": failure_reason,
        "progress": progress,
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
    case) and the webhook key (`RAYBEAM_WEBHOOK_KEY`; `raybeam keys webhook` prints it). Raises `InvalidWebhookSignature` when a
    header is missing, the signature does not match, the timestamp is more than `tolerance`
    seconds from now (a replay), or the body is not a JSON object.

    A FastAPI receiver::

        from fastapi import FastAPI, HTTPException, Request
        from raybeam.webhooks import InvalidWebhookSignature, verify_webhook

        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> dict[str, str]:
            try:
                event = verify_webhook(await request.body(), request.headers, WEBHOOK_KEY)
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
            f"{HEADER_SIGNATURE} does not match the body; check that the key is the webhook "
            "key (`raybeam keys webhook`) and that the raw body is passed unchanged"
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


#: the most bytes of an answer an attempt reads; the rest is cut off unread
MAX_ANSWER = 64 * 1024
#: concurrent connections of one sender in all
MAX_CONNECTIONS = 500
#: seconds an attempt may take in all, unless RAYBEAM_WEBHOOK_TIMEOUT says otherwise
TIMEOUT = 30.0
TIMEOUT_ENV = "RAYBEAM_WEBHOOK_TIMEOUT"


@dataclass(frozen=True)
class DeliveryPolicy:
    """How hard `deliver()` tries: attempts in all, and the first backoff (doubled each retry).

    `total_timeout` bounds each attempt from name lookup to the last byte read; None reads
    `RAYBEAM_WEBHOOK_TIMEOUT` [30] when the attempt starts.
    """

    attempts: int = 3
    backoff: float = 1.0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float | None = None


_DEFAULT_POLICY = DeliveryPolicy()


def total_timeout(policy: DeliveryPolicy) -> float:
    if policy.total_timeout is not None:
        return policy.total_timeout
    return positive_env(TIMEOUT_ENV, TIMEOUT)


def new_client() -> httpx.AsyncClient:
    """The HTTP client of deliveries: no redirects, no proxies from the environment (the
    checked address is the one connected to), and no connection kept between attempts (a
    connection made for one name is never reused for another)."""
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=0),
    )


class _NotAllowed(Exception):
    pass


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _short_error(error: BaseException) -> str:
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}"[:300] if text else name


async def _post(
    http: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: httpx.Timeout,
) -> int:
    """One POST to the checked address of `url`; the answer's status code."""
    try:
        destination = await resolve_destination(url)
    except OSError as exc:  # the name does not resolve (now): a connection error
        raise httpx.ConnectError(f"cannot resolve the host of {url}: {exc}") from None
    if destination is None:
        raise _NotAllowed
    address = destination.addresses[0]
    target = httpx.URL(url).copy_with(host=str(address))
    sent = {
        **headers,
        "Host": urlsplit(url).netloc.rpartition("@")[2],
        "Accept-Encoding": "identity",
    }
    extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
    async with http.stream(
        "POST", target, content=body, headers=sent, timeout=timeout, extensions=extensions
    ) as response:
        read = 0
        async for chunk in response.aiter_raw():  # raw: never decompressed
            read += len(chunk)
            if read >= MAX_ANSWER:
                break  # the rest of the answer is never read: closing drops it
        return response.status_code


async def _attempt(
    http: httpx.AsyncClient, url: str, payload: dict[str, Any], key: bytes, policy: DeliveryPolicy
) -> dict[str, Any]:
    """One attempt, bounded in time: its record (`may_retry` says whether to try again)."""
    timeout = httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.connect_timeout,
    )
    at = _now_iso()
    limit = total_timeout(policy)
    # Signed afresh each attempt so a late retry is not rejected as stale.
    body, headers = build_request(payload, key)
    try:
        code = await asyncio.wait_for(_post(http, url, body, headers, timeout), limit)
    except _NotAllowed:
        record: dict[str, Any] = {"at": at, "error": NOT_ALLOWED}
    except asyncio.TimeoutError:
        record = {"at": at, "error": f"timeout: no complete answer within {limit:g} s"}
    except Exception as e:
        record = {"at": at, "error": _short_error(e)}
    else:
        record = {"at": at, "status_code": code}
    return record


async def attempts(
    url: str,
    payload: dict[str, Any],
    key: bytes,
    policy: DeliveryPolicy = _DEFAULT_POLICY,
    client: httpx.AsyncClient | None = None,
    limits: DestinationLimits | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """POST `payload` to `url`, retrying as SPEC §4 says; yields each attempt as
    `{"at", "status_code"}` or `{"at", "error"}`, and ends after a 2xx answer or the last try.

    An attempt waits for a slot of its destination in `limits` (not counted in its time).
    Never raises except `asyncio.CancelledError`.

    >>> [a async for a in attempts(url, payload, key)]  # doctest: +SKIP
    [{'at': '2026-05-22T23:20:01.12Z', 'status_code': 200}]
    """
    own_client = client is None
    http = client if client is not None else new_client()
    limits = limits if limits is not None else DestinationLimits()
    task_id = payload.get("task_id")
    try:
        for attempt in range(1, max(1, policy.attempts) + 1):
            async with limits.slot(url):
                record = await _attempt(http, url, payload, key, policy)
            yield record
            code = record.get("status_code")
            if isinstance(code, int) and 200 <= code < 300:
                return
            logger.warning(
                "webhook for task %s to %s: attempt %d/%d failed (%s)",
                task_id,
                url,
                attempt,
                policy.attempts,
                record.get("error", code),
            )
            if not may_retry(record) or attempt >= policy.attempts:
                break
            await asyncio.sleep(policy.backoff * 2 ** (attempt - 1))
        logger.error("webhook for task %s to %s was not delivered", task_id, url)
    finally:
        if own_client:
            try:
                await http.aclose()
            except Exception:
                logger.exception("closing the webhook HTTP client failed")


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
    limits: DestinationLimits | None = None,
) -> bool:
    """`attempts()`, each passed to `on_attempt`; True once a 2xx answer arrives.

    >>> asyncio.run(deliver(url, payload, key, attempts.append))  # doctest: +SKIP
    True
    """
    delivered = False
    async for attempt in attempts(url, payload, key, policy, client, limits):
        code = attempt.get("status_code")
        delivered = isinstance(code, int) and 200 <= code < 300
        await _record(on_attempt, attempt)
    return delivered
