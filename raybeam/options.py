"""Per-call options: what `.options()` and the HTTP body may set for one task.

Two kinds: overrides of the queue's settings (`callback_url`, `timeout`, `retries`, `ttl`),
which become part of the task's spec; and options of the task itself (`idempotency_key`,
`priority`, `delay`, `run_at`), which the registry keeps on the record.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from raybeam.errors import InvalidConfiguration
from raybeam.policy import Retries, retry_settings

#: per-call settings that override the queue's
OVERRIDES = ("callback_url", "timeout", "retries", "ttl")
#: per-call settings of the task itself
TASK_OPTIONS = ("idempotency_key", "priority", "delay", "run_at")
#: the longest delay a task may be given (a year), so a typo cannot park it for ever
MAX_DELAY = 365 * 86400
MAX_KEY = 256


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidConfiguration(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31:
        raise InvalidConfiguration(f"priority must be an integer (higher first), got {value!r}")
    return value


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validated per-call options of both kinds; InvalidConfiguration names the bad one."""
    from raybeam.webhooks import validate_callback_url

    unknown = set(options) - set(OVERRIDES) - set(TASK_OPTIONS)
    if unknown:
        raise InvalidConfiguration(
            f"unknown option(s) {sorted(unknown)}; .options() takes "
            f"{', '.join(OVERRIDES + TASK_OPTIONS)}"
        )
    out = dict(options)
    if "timeout" in out and out["timeout"] != -1:
        check_int("timeout", out["timeout"], 1)
    if "retries" in out and not isinstance(out["retries"], Retries):
        check_int("retries", out["retries"], 0)
    if "ttl" in out:
        check_int("ttl", out["ttl"], 1)
    if "callback_url" in out:
        out["callback_url"] = validate_callback_url(out["callback_url"])
    if "priority" in out:
        check_priority(out["priority"])
    if "idempotency_key" in out:
        key = out["idempotency_key"]
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
            raise InvalidConfiguration(
                f"idempotency_key must be a non-empty string of at most {MAX_KEY} characters"
            )
    if "delay" in out and "run_at" in out:
        raise InvalidConfiguration("give delay or run_at, not both")
    if "delay" in out:
        delay = out["delay"]
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise InvalidConfiguration(f"delay must be a number of seconds, got {delay!r}")
        if not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY:
            raise InvalidConfiguration(f"delay must be between 0 and {MAX_DELAY} s, got {delay}")
    if "run_at" in out:
        out["run_at"] = unix_time(out["run_at"])
    return out


def unix_time(value: Any) -> float:
    """A datetime (naive ones are UTC) or an ISO-8601 string as unix seconds."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidConfiguration(
                f"run_at must be an ISO-8601 time such as 2026-05-22T23:19:58Z, got {value!r}"
            ) from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        stamp = float(value)
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        stamp = value.timestamp()
    else:
        raise InvalidConfiguration(
            f"run_at must be a datetime or an ISO-8601 string, got {value!r}"
        )
    if not math.isfinite(stamp):
        raise InvalidConfiguration(f"run_at must be a real time, got {value!r}")
    return stamp


def split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Checked options as (spec overrides, task options) for a registry item."""
    spec = {k: v for k, v in options.items() if k in OVERRIDES}
    if "retries" in spec:
        spec.update(retry_settings(spec.pop("retries")))
    return spec, {k: v for k, v in options.items() if k in TASK_OPTIONS}
