"""Settings from the environment (SPEC §6), overridable from Python with `configure()`."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raybeam.errors import InvalidConfiguration

REGISTRY_NAME = "raybeam_registry"
REGISTRY_NAMESPACE = "raybeam"

#: the token the shipped cluster files carry as an example; it must never open the API
PLACEHOLDER_TOKEN = "CHANGE-ME"


@dataclasses.dataclass(frozen=True)
class Settings:
    ray_address: str = ""
    storage: str = ""
    #: empty: open mode (SPEC §10); never holds an empty token or the placeholder
    auth_tokens: tuple[str, ...] = ()
    #: signs local output links; generated in storage when empty
    signing_key: str = ""
    #: signs webhooks; generated in storage when empty; never the same as `signing_key`
    webhook_key: str = ""
    public_url: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    output_url_expires: int = 3600
    #: final tasks (records and outputs) older than this are purged
    retention_seconds: int = 7 * 86400
    #: local journal batches and snapshots reach the disk before they are acknowledged
    fsync: bool = True

    def __post_init__(self) -> None:
        check_tokens(self.auth_tokens)
        if self.signing_key and self.signing_key == self.webhook_key:
            raise InvalidConfiguration(
                "RAYBEAM_WEBHOOK_KEY is the same as RAYBEAM_SIGNING_KEY: every webhook receiver "
                "could then sign download links; give each its own key (or unset "
                "RAYBEAM_WEBHOOK_KEY, and one is generated in storage)"
            )

    @property
    def storage_url(self) -> str:
        """The storage URL with the default filled in: a local folder under the working directory."""
        return self.storage or str(Path.cwd() / "raybeam-data")

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")


_ENV = {
    "ray_address": "RAY_ADDRESS",
    "storage": "RAYBEAM_STORAGE",
    "auth_tokens": "RAYBEAM_AUTH_TOKENS",
    "signing_key": "RAYBEAM_SIGNING_KEY",
    "webhook_key": "RAYBEAM_WEBHOOK_KEY",
    "public_url": "RAYBEAM_PUBLIC_URL",
    "http_host": "RAYBEAM_HTTP_HOST",
    "http_port": "RAYBEAM_HTTP_PORT",
    "output_url_expires": "RAYBEAM_OUTPUT_URL_EXPIRES",
    "retention_seconds": "RAYBEAM_RETENTION_SECONDS",
    "fsync": "RAYBEAM_FSYNC",
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

_overrides: dict[str, Any] = {}


def parse_tokens(value: str | Iterable[str]) -> tuple[str, ...]:
    """Tokens from a comma-separated string or a list; "" and [] mean open mode.

    >>> parse_tokens("alpha, beta")
    ('alpha', 'beta')
    """
    if isinstance(value, str):
        if not value:
            return ()
        items: list[Any] = value.split(",")
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise InvalidConfiguration(
            f"auth_tokens must be a comma-separated string or a list of strings, got "
            f"{type(value).__name__}"
        )
    for n, token in enumerate(items, 1):
        if not isinstance(token, str):
            raise InvalidConfiguration(
                f"auth token {n} is a {type(token).__name__}, not a string; pass tokens as strings"
            )
    tokens = tuple(token.strip() for token in items)
    check_tokens(tokens)
    return tokens


def check_tokens(tokens: tuple[str, ...]) -> None:
    """Refuse an empty or blank token and the placeholder; token values never appear in the error."""
    for n, token in enumerate(tokens, 1):
        if not isinstance(token, str) or not token.strip():
            raise InvalidConfiguration(
                f"auth token {n} of {len(tokens)} is empty: RAYBEAM_AUTH_TOKENS (or "
                "configure(auth_tokens=...)) has an empty entry, as in ',' or 'a,,b', which "
                "would let a request with an empty token in; remove it, or unset "
                "RAYBEAM_AUTH_TOKENS for open mode (this machine only)"
            )
        if token.strip().upper() == PLACEHOLDER_TOKEN:
            raise InvalidConfiguration(
                f"auth token {n} of {len(tokens)} is the placeholder {PLACEHOLDER_TOKEN!r} "
                "from the example cluster files; replace it with a secret of your own, e.g. "
                "the output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )


def _coerce(name: str, value: Any) -> Any:
    if name == "auth_tokens":
        return parse_tokens(value)
    if name in ("http_port", "output_url_expires", "retention_seconds"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidConfiguration(f"{name} must be an integer, got {value!r}") from None
    if name == "fsync":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise InvalidConfiguration(
            f"RAYBEAM_FSYNC must be 1 (the default: batches reach the disk before they are "
            f"acknowledged) or 0 (faster, may lose acknowledged changes on power loss), "
            f"got {value!r}"
        )
    return str(value)


def settings() -> Settings:
    """The settings in force now: `configure()` overrides, then the environment, then defaults."""
    values: dict[str, Any] = {}
    for name, env in _ENV.items():
        if name in _overrides:
            values[name] = _overrides[name]
        elif os.environ.get(env):
            values[name] = _coerce(name, os.environ[env])
    return Settings(**values)


def configure(**kwargs: Any) -> Settings:
    """Override settings from Python; names are the lower-case forms of SPEC §6.

    A value raybeam cannot use raises `InvalidConfiguration` and changes nothing.

    >>> configure(storage="s3://my-bucket/raybeam", auth_tokens=["secret"])  # doctest: +SKIP
    """
    unknown = set(kwargs) - set(_ENV)
    if unknown:
        raise InvalidConfiguration(
            f"unknown setting(s) {sorted(unknown)}; known settings are {sorted(_ENV)}"
        )
    coerced = {name: _coerce(name, value) for name, value in kwargs.items()}
    before = dict(_overrides)
    _overrides.update(coerced)
    try:
        return settings()
    except InvalidConfiguration:
        _overrides.clear()
        _overrides.update(before)
        raise


def positive_env(name: str, default: float) -> float:
    """A positive number from the environment variable `name`, read now; `default` when it
    is unset, and (with a warning) when it is not a positive number."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        logging.getLogger("raybeam").warning(
            "%s=%r is not a positive number; using %g", name, raw, default
        )
        return default
    return value
