"""One registry writes to one storage at a time: a lease in storage (SPEC §11).

`<storage>/registry/lease` holds the holder (this Ray cluster's id and the registry's
incarnation), an epoch that grows with every new holder, and when the lease expires
(`RAYBEAM_LEASE_SECONDS` [30] after the last renewal). A registry on another cluster finds
the lease live and raises `StorageInUse` naming the holder, until it expires. A registry
restarted in the same cluster takes it back at once, so recovery after a registry kill
stays fast. A holder renews every third of the lease; one that finds the lease taken stops
writing at once.

Taking the lease is write-then-read-back: two registries that both find it free both write,
and only the one whose write is read back goes on (the other refuses, as if it had found it
held). On storage where the last writer wins this leaves one holder.
"""

from __future__ import annotations

import json
import logging
import posixpath
import socket
import time
from typing import Any

import fsspec

from raybeam.config import positive_env
from raybeam.errors import StorageInUse

log = logging.getLogger("raybeam.fencing")

DEFAULT_SECONDS = 30.0


def lease_seconds() -> float:
    return max(1.0, positive_env("RAYBEAM_LEASE_SECONDS", DEFAULT_SECONDS))


def cluster_id() -> str:
    """The connected Ray cluster, as the lease names it: the head node's host name and the
    cluster's GCS address (the registry runs on the head). A cluster stopped and started
    again on the same head is the same cluster and takes its lease back at once; another
    cluster (another head, or another port) waits for the lease to expire."""
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().gcs_address}"


class StorageLease:
    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        cluster: str,
        incarnation: str,
        seconds: float | None = None,
    ) -> None:
        self.fs = fs
        self.path = posixpath.join(root.rstrip("/"), "lease")
        self.cluster = cluster
        self.holder = f"{cluster}/{incarnation}"
        self.seconds = lease_seconds() if seconds is None else seconds
        self.epoch = 0
        #: False once another registry took the lease: this one must not write again
        self.held = False

    def read(self) -> dict[str, Any] | None:
        # One whole read (one GET on S3). A file opened for reading would fetch with the
        # ETag its first request saw, and the holder renews the lease in place every few
        # seconds: s3fs then raises FileExpired instead of answering who holds it.
        try:
            data: dict[str, Any] = json.loads(self.fs.cat_file(self.path))
            return data
        except FileNotFoundError:
            return None
        except ValueError:  # torn or foreign: treat as free, the epoch restarts above 0
            return None

    def _write(self, now: float) -> None:
        body = {"holder": self.holder, "cluster": self.cluster, "epoch": self.epoch,
                "expires": now + self.seconds}  # fmt: skip
        self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        with self.fs.open(self.path, "w") as f:
            f.write(json.dumps(body))

    def acquire(self, now: float | None = None) -> None:
        """Take the lease, or raise StorageInUse naming the live holder (blocking I/O)."""
        now = time.time() if now is None else now
        current = self.read()
        if current is not None and current.get("cluster") != self.cluster:
            expires = float(current.get("expires", 0))
            if expires > now:
                raise StorageInUse(
                    f"storage is in use by the registry {current.get('holder')} of another Ray "
                    f"cluster (lease epoch {current.get('epoch')}, expires in "
                    f"{expires - now:.0f} s). Stop that cluster's registry, or point "
                    "RAYBEAM_STORAGE elsewhere; the lease expires RAYBEAM_LEASE_SECONDS after "
                    "its holder stops renewing it."
                )
        self.epoch = int((current or {}).get("epoch", 0)) + 1
        self._write(now)
        back = self.read()
        if back is None or back.get("holder") != self.holder or back.get("epoch") != self.epoch:
            raise StorageInUse(
                f"another registry ({(back or {}).get('holder')}) took the storage's lease at "
                "the same moment; try again once it has stopped"
            )
        self.held = True

    def renew(self, now: float | None = None) -> bool:
        """Extend the lease; False (and held no more) when another registry has it now."""
        if not self.held:
            return False
        now = time.time() if now is None else now
        current = self.read()
        if current is not None and (
            current.get("holder") != self.holder or current.get("epoch") != self.epoch
        ):
            log.error(
                "the storage's lease was taken by %s (epoch %s): this registry stops writing",
                current.get("holder"), current.get("epoch"),
            )  # fmt: skip
            self.held = False
            return False
        self._write(now)
        return True
