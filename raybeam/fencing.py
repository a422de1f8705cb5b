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
held). On storage where the last writer wins this leaves one holder. Every write replaces the
lease whole (a rename locally, one PUT on an object store), so a reader never sees half of one.

A holder writes only while its lease is current by its own clock: until a quarter of the
lease before it expires (`current`). Another cluster may take it once it has expired by that
cluster's clock, so clocks up to a quarter of the lease apart (7.5 s at 30) never see two
writers. A holder whose renewals fail (storage away, a stalled process) stops writing when
its lease lapses, and goes on once a renewal finds the lease still its own.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import time
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raybeam.config import positive_env
from raybeam.errors import StorageInUse
from raybeam.journal import replace_durably

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
        #: this registry's clock, until when its writes are safe (see `current`)
        self.valid_until = 0.0
        #: who took the lease, once it was taken
        self.taken_by: str | None = None

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

    def current(self) -> bool:
        """Held, and far enough from its expiry that no other registry may take it."""
        return self.held and time.time() < self.valid_until

    def _write(self, now: float) -> None:
        body = {"holder": self.holder, "cluster": self.cluster, "epoch": self.epoch,
                "expires": now + self.seconds}  # fmt: skip
        raw = json.dumps(body).encode()
        if isinstance(self.fs, LocalFileSystem):
            path = self.fs._strip_protocol(self.path)
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            replace_durably(path, raw)
        else:
            self.fs.pipe_file(self.path, raw)

    def _ours(self, lease: dict[str, Any] | None) -> bool:
        return lease is not None and (lease.get("holder"), lease.get("epoch")) == (
            self.holder,
            self.epoch,
        )

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
        if not self._ours(back):
            raise StorageInUse(
                f"another registry ({(back or {}).get('holder')}) took the storage's lease at "
                "the same moment; try again once it has stopped"
            )
        self.held = True
        self.valid_until = now + 0.75 * self.seconds

    def renew(self, now: float | None = None) -> bool:
        """Extend the lease; False (and held no more) when another registry has it now. The
        lease is read before the write and after it: a taker between the two is found. (A
        lease removed by hand is written again.)"""
        if not self.held:
            return False
        now = time.time() if now is None else now
        current = self.read()
        if current is not None and not self._ours(current):
            return self._taken(current)
        self._write(now)
        if not self._ours(back := self.read()):
            return self._taken(back)
        self.valid_until = now + 0.75 * self.seconds
        return True

    def give_up(self) -> None:
        """Stop holding (and renewing) the lease: this registry found another one's journal
        object where its own was to go, so it cannot write; the lease expires, and a
        registry restarted loads what the other wrote."""
        self.held = False
        self.taken_by = self.taken_by or "a registry that wrote this registry's next journal key"

    def _taken(self, lease: dict[str, Any] | None) -> bool:
        self.held = False
        self.taken_by = (lease or {}).get("holder") or "another registry (the lease is gone)"
        log.error(
            "the storage's lease was taken by %s (epoch %s): this registry stops writing",
            self.taken_by, (lease or {}).get("epoch"),
        )  # fmt: skip
        return False
