"""The filesystem behind `RAYBEAM_STORAGE` (SPEC §5), through fsspec, and the links to its files.

One URL names everything: a local folder, `file://...`, `s3://bucket/prefix` or any other
fsspec protocol. Outputs live under `outputs/`, the generated keys under `keys/` (keys.py).
Storage that can presign (S3) hands out presigned URLs; any other gets HMAC-signed links to
the HTTP API's `/output/id/<output_id>` route, which checks them with `verify_local_link`
and finds the file with `find_output` (one stat, given where the registry says the output
is).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import urlencode

import fsspec
from fsspec import AbstractFileSystem

from raybeam import config, keys
from raybeam.errors import InvalidConfiguration
from raybeam.keys import SIGNING_KEY, WEBHOOK_KEY

logger = logging.getLogger(__name__)

OUTPUTS = "outputs"

_S3_PROTOCOLS = ("s3", "s3a")
_LOCAL_PROTOCOLS = (None, "file", "local")
# Object stores have no folders to create, and `makedirs` there costs a request.
_OBJECT_STORES = frozenset({*_S3_PROTOCOLS, "gs", "gcs", "az", "abfs", "abfss"})
# stores whose exclusive create is known to hold, so a generated key needs no settling read
_EXCLUSIVE_CREATE = frozenset({*_LOCAL_PROTOCOLS, "memory"})

# s3fs reads `max_concurrency` parts of `chunksize` into memory at once (10 x 50 MiB by
# default: a 500 MiB peak for a large file), and botocore holds about one more copy of each
# part while sending it; 2 parts of 8 MiB in flight keep an upload of any size near 32 MiB.
_S3_PART_SIZE = 8 * 2**20
_S3_PARTS_IN_FLIGHT = 2
_S3_MAX_PARTS = 10_000


class Storage:
    """An fsspec filesystem rooted at one URL, with keys ('/'-separated, relative) below it.

    >>> storage = Storage("s3://my-bucket/raybeam")  # doctest: +SKIP
    >>> storage.put_bytes("outputs/q/t/o/a.txt", b"hi")  # doctest: +SKIP
    >>> storage.signed_url("outputs/q/t/o/a.txt", "o", expires_in=3600)  # doctest: +SKIP
    'https://my-bucket.s3.amazonaws.com/raybeam/outputs/q/t/o/a.txt?X-Amz-Algorithm=...'
    """

    fs: AbstractFileSystem
    root: str

    def __init__(
        self,
        url: str,
        *,
        signing_key: str | None = None,
        webhook_key: str | None = None,
        public_url: str | None = None,
        s3_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        # what a pickled copy is rebuilt from: no keys, which stay out of Ray's task specs
        self._init_args = (url, public_url, s3_options)
        self._protocol = fsspec.core.split_protocol(url)[0]
        options: dict[str, Any] = {}
        if self._protocol in _S3_PROTOCOLS:
            options = _s3_options(s3_options)
        elif self._protocol in _LOCAL_PROTOCOLS:
            options = {"auto_mkdir": True}
        self.fs, root = fsspec.core.url_to_fs(url, **options)
        self.root = root.rstrip("/")
        self.public_url = public_url.rstrip("/") if public_url else None
        self._configured = {
            SIGNING_KEY: signing_key.encode() if signing_key else None,
            WEBHOOK_KEY: webhook_key.encode() if webhook_key else None,
        }
        self._generated: dict[str, bytes] = {}
        self._key_lock = threading.Lock()
        self._can_presign: bool | None = None

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Travels to Ray workers and actors as its arguments, without its keys: the other
        # side uses its own configured (or published) keys, else the generated ones.
        return (_rebuild, self._init_args)

    def path(self, key: str) -> str:
        """The path inside `fs` of a relative key such as `outputs/q/t/o/a.txt`."""
        key = key.strip("/")
        if ".." in key.split("/"):
            raise ValueError(f"storage key {key!r} has a '..' component")
        return f"{self.root}/{key}" if key else self.root

    def put_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        """Upload a local file, streamed: memory use does not grow with the file's size."""
        path = self.path(key)
        if self._protocol in _S3_PROTOCOLS:
            size = os.path.getsize(local_path)
            part = max(_S3_PART_SIZE, math.ceil(size / _S3_MAX_PARTS))
            self.fs.put_file(
                os.fspath(local_path), path, chunksize=part, max_concurrency=_S3_PARTS_IN_FLIGHT
            )
        else:
            self._make_parent(path)
            self.fs.put_file(os.fspath(local_path), path)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        self._make_parent(path)
        self.fs.pipe_file(path, data)

    def read_bytes(self, key: str) -> bytes | None:
        """The content stored at `key`; None when there is none."""
        try:
            return bytes(self.fs.cat_file(self.path(key)))
        except FileNotFoundError:
            return None

    def open(self, key: str, mode: str = "rb") -> IO[Any]:
        path = self.path(key)
        if any(m in mode for m in "wax"):
            self._make_parent(path)
        f: IO[Any] = self.fs.open(path, mode)
        return f

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def rm(self, key: str, recursive: bool = False) -> None:
        self.fs.rm(self.path(key), recursive=recursive)

    def remove_folders(self, folders: Iterable[str]) -> None:
        """Remove these folders (tasks' outputs) and what they hold; one that cannot be
        removed is logged and left. Blocking: run in a thread."""
        for folder in folders:
            try:
                if self.exists(folder):
                    self.rm(folder, recursive=True)
            except Exception:
                logger.warning("could not remove outputs in %s", folder, exc_info=True)

    def find_output(self, output_id: str, path: str | None = None) -> str | None:
        """The key of the output with this id (`outputs/<queue>/<task_id>/<output_id>/<name>`).

        `path` is `<queue>/<task_id>/<name>`, from the registry's `output_key`: with it the
        answer costs one stat, however many outputs are stored. Without it (an output the
        registry no longer knows) every output folder is listed. Check the link first.
        """
        if not _is_hex(output_id):
            return None
        if path:
            parts = path.split("/")  # <queue>/<task_id>/<name>
            if len(parts) != 3 or any(p in ("", ".", "..") or "\x00" in p for p in parts):
                return None
            key = "/".join((OUTPUTS, parts[0], parts[1], output_id, parts[2]))
            return key if self.fs.isfile(self.path(key)) else None
        found = self.fs.glob(self.path(f"{OUTPUTS}/*/*/{output_id}/*"))
        return _relative(self, found[0]) if found else None

    # -- keys --------------------------------------------------------------------------------

    def signing_key(self) -> bytes:
        """The key that signs local output links (never webhooks: see `webhook_key`).

        `RAYBEAM_SIGNING_KEY` (or the constructor's) when set; otherwise the one persisted at
        `keys/signing_key`, generated on first use. It is stored as hex text and used as the
        bytes of that text, so copying the file's content into `RAYBEAM_SIGNING_KEY` keeps
        every existing link valid.
        """
        return self._key(SIGNING_KEY)

    def webhook_key(self) -> bytes:
        """The key that signs webhooks, which receivers check with `raybeam.verify_webhook`.

        `RAYBEAM_WEBHOOK_KEY` (or the constructor's) when set; otherwise the one persisted at
        `keys/webhook_key`, generated on first use (`raybeam keys webhook` prints it). It
        never equals the signing key, so a receiver cannot sign download links.
        """
        key = self._key(WEBHOOK_KEY)
        if hmac.compare_digest(key, self.signing_key()):
            raise InvalidConfiguration(
                "the webhook key is the same as the signing key of output links, so every "
                "webhook receiver could sign download links; set RAYBEAM_WEBHOOK_KEY (or "
                "RAYBEAM_SIGNING_KEY) to a value of its own"
            )
        return key

    def _key(self, name: str) -> bytes:
        configured = self._configured[name]
        if configured is not None:
            return configured
        with self._key_lock:
            key = self._generated.get(name)
            if key is None:
                key = keys.load_or_create(
                    self.fs,
                    self.path(name),
                    make_parent=self._make_parent,
                    settle=self._protocol not in _EXCLUSIVE_CREATE,
                )
                self._generated[name] = key
            return key

    @property
    def can_presign(self) -> bool:
        """True when the filesystem makes its own expiring URLs (s3fs does; local disk does not)."""
        if self._can_presign is None:
            if type(self.fs).sign is AbstractFileSystem.sign:
                self._can_presign = False
            else:
                try:
                    self.fs.sign(self.path(SIGNING_KEY), expiration=60)
                    self._can_presign = True
                except NotImplementedError:
                    self._can_presign = False
        return self._can_presign

    def signed_url(self, key: str, output_id: str, expires_in: int) -> str:
        """A URL that downloads `key` for `expires_in` seconds.

        Presigned by the filesystem when it can; otherwise
        `<public_url>/output/id/<output_id>?expires=<unix>&signature=<hmac>` (SPEC §3), which
        the HTTP API serves after `verify_local_link`, asking the registry where that id's
        file is (no listing of storage).
        """
        if expires_in <= 0:
            raise ValueError(f"expires_in must be a positive number of seconds, got {expires_in}")
        if self.can_presign:
            return str(self.fs.sign(self.path(key), expiration=int(expires_in)))
        expires = int(time.time()) + int(expires_in)
        base = self.public_url or config.settings().base_url
        params: dict[str, str | int] = {"expires": expires}
        params["signature"] = self._link_signature(output_id, expires)
        return f"{base}/output/id/{output_id}?{urlencode(params)}"

    def verify_local_link(
        self, output_id: str, expires: str | int, signature: str, now: float | None = None
    ) -> bool:
        """True when a local link's `expires` and `signature` are ours and not past; never raises."""
        try:
            if isinstance(expires, str):
                if not (expires.isascii() and expires.isdigit()):
                    return False
                expires = int(expires)
            if not isinstance(expires, int) or isinstance(expires, bool):
                return False
            if not isinstance(output_id, str) or not isinstance(signature, str):
                return False
            expected = self._link_signature(output_id, expires)
            valid = hmac.compare_digest(expected.encode(), signature.encode())
            current = time.time() if now is None else now
            return valid and expires >= current
        except Exception:
            # a link check answers yes or no; a storage outage here is logged and refused
            logger.warning("could not verify a link to output %r", output_id, exc_info=True)
            return False

    def _link_signature(self, output_id: str, expires: int) -> str:
        message = f"{output_id}.{expires}".encode()
        return hmac.new(self.signing_key(), message, hashlib.sha256).hexdigest()

    def _make_parent(self, path: str) -> None:
        if self._protocol not in _OBJECT_STORES:
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)


def _rebuild(url: str, public_url: str | None, s3_options: dict[str, Any] | None) -> Storage:
    signing, webhook = keys.configured_keys()
    return Storage(
        url, signing_key=signing, webhook_key=webhook, public_url=public_url, s3_options=s3_options
    )


def _s3_options(given: dict[str, Any] | None) -> dict[str, Any]:
    """s3fs options with SigV4 signing and the endpoint from the environment when set."""
    options = dict(given or {})
    config_kwargs = dict(options.get("config_kwargs") or {})
    # Presigned URLs for custom endpoints (MinIO, moto, R2...) must be SigV4.
    config_kwargs.setdefault("signature_version", "s3v4")
    options["config_kwargs"] = config_kwargs
    client_kwargs = dict(options.get("client_kwargs") or {})
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and not options.get("endpoint_url"):
        client_kwargs.setdefault("endpoint_url", endpoint)
    options["client_kwargs"] = client_kwargs
    return options


_storages: dict[tuple[str, str, str, str], Storage] = {}
_storages_lock = threading.Lock()


def storage_from_settings(url: str | None = None) -> Storage:
    """The Storage for `url` (default: `RAYBEAM_STORAGE`) with the configured keys (this
    process's settings, else those published to Ray: keys.py) and public URL; one instance
    per URL and settings in each process.

    >>> storage_from_settings().signed_url(key, output_id, 3600)  # doctest: +SKIP
    """
    current = config.settings()
    url = url or current.storage_url
    cache_key = (url, current.signing_key, current.webhook_key, current.base_url)
    with _storages_lock:
        storage = _storages.get(cache_key)
        if storage is None:
            signing, webhook = keys.configured_keys()
            storage = Storage(
                url, signing_key=signing, webhook_key=webhook, public_url=current.base_url
            )
            _storages[cache_key] = storage
        return storage


# -- retention ------------------------------------------------------------------------------


def sweep_outputs(storage: Storage, older_than_seconds: float, now: float | None = None) -> int:
    """Remove every output folder (`outputs/<queue>/<task_id>/<output_id>/`) whose newest file
    is older than `older_than_seconds`; return how many were removed.

    >>> sweep_outputs(storage_from_settings(), older_than_seconds=7 * 86400)  # doctest: +SKIP
    3
    """
    cutoff = (time.time() if now is None else now) - older_than_seconds
    outputs_root = storage.path(OUTPUTS)
    try:
        files: dict[str, dict[str, Any]] = storage.fs.find(outputs_root, detail=True)
    except FileNotFoundError:
        return 0
    newest: dict[str, float] = defaultdict(lambda: -math.inf)
    undated: set[str] = set()
    for path, info in files.items():
        parts = _relative(storage, path).split("/")
        if len(parts) < 5:  # not inside an output folder: leave it alone
            continue
        folder = "/".join(parts[:4])
        modified = _modified_time(info)
        if modified is None:
            undated.add(folder)
        else:
            newest[folder] = max(newest[folder], modified)
    removed = 0
    for folder, modified in sorted(newest.items()):
        if folder in undated or modified >= cutoff:
            continue
        storage.rm(folder, recursive=True)
        removed += 1
        _remove_empty_parents(storage, folder)
    return removed


def _remove_empty_parents(storage: Storage, folder: str) -> None:
    if storage._protocol in _OBJECT_STORES:
        return  # prefixes vanish with their last object
    parts = folder.split("/")
    for depth in (3, 2):  # the task folder, then the queue folder
        path = storage.path("/".join(parts[:depth]))
        try:
            if storage.fs.ls(path, detail=False):
                return
            storage.fs.rmdir(path)
        except OSError:
            return


def _modified_time(info: dict[str, Any]) -> float | None:
    for name in ("mtime", "LastModified", "last_modified", "modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.timezone.utc)
            return parsed.timestamp()
    return None


def _relative(storage: Storage, path: str) -> str:
    path = storage.fs._strip_protocol(path).rstrip("/")
    root = storage.fs._strip_protocol(storage.root).rstrip("/")
    if root and path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return path.lstrip("/") if not root else path


def _is_hex(value: str) -> bool:
    return bool(value) and len(value) <= 64 and all(c in "0123456789abcdef" for c in value)
