"""Settings from the environment (SPEC §6), overridable from Python with `configure()`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from raybeam.errors import InvalidConfiguration

REGISTRY_NAME = "raybeam_registry"
REGISTRY_NAMESPACE = "raybeam"


@dataclasses.dataclass(frozen=True)
class Settings:
    ray_address: str = ""
    storage: str = ""
    auth_tokens: tuple[str, ...] = ()
    signing_key: str = ""
    public_url: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    output_url_expires: int = 3600
    #: final tasks (records and outputs) older than this are purged
    retention_seconds: int = 7 * 86400

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
    "public_url": "RAYBEAM_PUBLIC_URL",
    "http_host": "RAYBEAM_HTTP_HOST",
    "http_port": "RAYBEAM_HTTP_PORT",
    "output_url_expires": "RAYBEAM_OUTPUT_URL_EXPIRES",
    "retention_seconds": "RAYBEAM_RETENTION_SECONDS",
}

_overrides: dict[str, Any] = {}


def _coerce(name: str, value: Any) -> Any:
    if name == "auth_tokens":
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return tuple(value)
    if name in ("http_port", "output_url_expires", "retention_seconds"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidConfiguration(f"{name} must be an integer, got {value!r}") from None
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

    >>> configure(storage="s3://my-bucket/raybeam", auth_tokens=["secret"])  # doctest: +SKIP
    """
    unknown = set(kwargs) - set(_ENV)
    if unknown:
        raise InvalidConfiguration(
            f"unknown setting(s) {sorted(unknown)}; known settings are {sorted(_ENV)}"
        )
    for name, value in kwargs.items():
        _overrides[name] = _coerce(name, value)
    return settings()
