"""Keys and tokens (SPEC §10): generated keys created once on any store, and secrets handed
to raybeam's own actors through Ray's internal key-value store.

Two keys, never the same: `RAYBEAM_SIGNING_KEY` signs local output links and
`RAYBEAM_WEBHOOK_KEY` signs webhooks, so a webhook receiver cannot make download links. Each
one left unset is generated on first use and stored as hex text at `<storage>/keys/<name>`.
Processes that generate one at once all end with the same key: on local disk the file is
published with `link()`, which fails when a file is there already; on object stores it is a
conditional create (`If-None-Match: *`, s3fs's "xb" mode). Every creator then reads back what
won. Object stores answer an unsupported conditional create either with an error (the key
is then written plainly) or, on some S3-compatible stores, by overwriting. Both cases are
covered by reading back after `SETTLE_SECONDS`: racers whose writes land within that window
agree. The race left is a creator stalled for longer than that between its first read and
its write, which can replace a key others already use.

Secrets never travel as actor arguments or in a `runtime_env`, where Ray's dashboard and
state API show them. Whoever starts the registry or the HTTP API calls `publish_secrets`
first; the actor calls `adopt_secrets` when it starts, which fills in every secret its own
environment leaves unset. Task workers find the keys the same way (`configured_keys`, used by
`storage_from_settings` and by an unpickled `Storage`). The store lives in Ray's GCS: anyone
who can connect to the cluster can read it, as they could run any code there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from raybeam import config
from raybeam.config import REGISTRY_NAMESPACE, Settings
from raybeam.errors import InvalidConfiguration, RaybeamError

SIGNING_KEY = "keys/signing_key"
WEBHOOK_KEY = "keys/webhook_key"

#: seconds a creator waits before reading back a key written without a conditional create
SETTLE_SECONDS = 1.0
_READ_TRIES = 50

_KV_NAMES = ("auth_tokens", "signing_key", "webhook_key")


def load_or_create(
    fs: AbstractFileSystem, path: str, *, make_parent: Callable[[str], None], settle: bool
) -> bytes:
    """The key stored at `path`, generated (once, whoever races) when there is none.

    `settle`: the store may not honour a conditional create, so read back only after
    `SETTLE_SECONDS`.
    """
    for _ in range(_READ_TRIES):
        key = _read_key(fs, path)
        if key:
            return key
        make_parent(path)
        if create_once(fs, path, secrets.token_hex(32).encode()) and settle:
            time.sleep(SETTLE_SECONDS)
        key = _read_key(fs, path)
        if key:
            return key
        time.sleep(0.01)  # another process created the file but has not written it yet
    raise OSError(
        f"the key file {path!r} stays empty: a process died while creating it; delete it and "
        "a new key is generated (links and webhooks signed with the old one stop verifying)"
    )


def _read_key(fs: AbstractFileSystem, path: str) -> bytes | None:
    try:
        data = bytes(fs.cat_file(path)).strip()
    except FileNotFoundError:
        return None
    return data or None


def create_once(fs: AbstractFileSystem, path: str, data: bytes) -> bool:
    """Write `data` at `path` unless something is there already; False when it was.

    True means this call wrote, and, where the store cannot create exclusively, possibly over
    another writer's data: read back before use.
    """
    if isinstance(fs, LocalFileSystem):
        return _create_local(path, data)
    try:
        with fs.open(path, "xb") as f:  # S3: a conditional PUT (If-None-Match: *)
            f.write(data)
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError, TypeError):
        # no exclusive create on this store: the last writer wins, and everyone re-reads it
        fs.pipe_file(path, data)
    return True


def _create_local(path: str, data: bytes) -> bool:
    # link() publishes a complete file, and only if none exists yet
    tmp = f"{path}.{secrets.token_hex(8)}.tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # a key in use must survive a power loss
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links on this mount: create exclusively instead
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.unlink(tmp)
    fsync_folder(posixpath.dirname(path))  # the key's name, and that of the keys/ folder
    fsync_folder(posixpath.dirname(posixpath.dirname(path)))
    return True


def fsync_folder(path: str) -> None:
    """Make the names created or renamed in a local folder durable (a no-op where folders
    cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the data itself is synced
        pass
    finally:
        os.close(fd)


# -- secrets for raybeam's own actors -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Secrets:
    """What `publish_secrets` stored; None: nothing published for it."""

    auth_tokens: tuple[str, ...] | None = None
    signing_key: str | None = None
    webhook_key: str | None = None


def publish_secrets(s: Settings, *, tokens: bool = True) -> None:
    """Store this process's keys (those set) and, with `tokens`, its auth tokens (even none:
    open mode) in Ray's internal key-value store, for the actors started next to read.

    The registry's creator publishes keys only (`tokens=False`), so a client without tokens
    never opens the HTTP API; the HTTP API's deployer publishes its tokens too.

    >>> publish_secrets(config.settings())  # doctest: +SKIP
    """
    kv = _kv()
    if kv is None:
        raise RaybeamError("publish_secrets needs a connected Ray: call ray.init() first")
    values: dict[str, Any] = {"signing_key": s.signing_key, "webhook_key": s.webhook_key}
    if tokens:
        values["auth_tokens"] = list(s.auth_tokens)
    for name, value in values.items():
        if value or name == "auth_tokens":
            kv.put(_kv_key(name), json.dumps(value).encode(), True, namespace=REGISTRY_NAMESPACE)


def read_secrets() -> Secrets:
    """What was published on the connected Ray cluster; nothing outside Ray."""
    kv = _kv()
    if kv is None:
        return Secrets()
    found: dict[str, Any] = {}
    for name in _KV_NAMES:
        raw = kv.get(_kv_key(name), namespace=REGISTRY_NAMESPACE)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            raise InvalidConfiguration(
                f"the {name} published in Ray's internal key-value store is not JSON; "
                "start the registry or the HTTP API again to publish it afresh"
            ) from None
        found[name] = config.parse_tokens(value) if name == "auth_tokens" else str(value)
    return Secrets(**found)


def adopt_secrets() -> Settings:
    """Configure this process with the published secrets its own settings leave unset; the
    settings in force after. Raybeam's actors (registry, HTTP replicas) call it at start.

    >>> adopt_secrets().auth_tokens  # doctest: +SKIP
    ('token-from-the-deployer',)
    """
    current = config.settings()
    published = read_secrets()
    changes: dict[str, Any] = {}
    for name in _KV_NAMES:
        value = getattr(published, name)
        if value and not getattr(current, name):
            changes[name] = value
    return config.configure(**changes) if changes else current


def configured_keys() -> tuple[str | None, str | None]:
    """(signing key, webhook key) from this process's settings, else published ones; None
    where neither has one (storage then holds a generated key)."""
    current = config.settings()
    signing, webhook = current.signing_key or None, current.webhook_key or None
    if signing is None or webhook is None:
        published = read_secrets()
        signing = signing or published.signing_key or None
        webhook = webhook or published.webhook_key or None
    return signing, webhook


@dataclasses.dataclass(frozen=True)
class _KV:
    put: Callable[..., Any]
    get: Callable[..., bytes | None]


def _kv() -> _KV | None:
    ray = sys.modules.get("ray")  # a process that never imported Ray is not connected to it
    if ray is None or not ray.is_initialized():
        return None
    from ray.experimental import internal_kv

    with contextlib.suppress(Exception):
        if internal_kv._internal_kv_initialized():  # type: ignore[no-untyped-call]
            return _KV(internal_kv._internal_kv_put, internal_kv._internal_kv_get)
    return None


def _kv_key(name: str) -> bytes:
    return f"secret/{name}".encode()
