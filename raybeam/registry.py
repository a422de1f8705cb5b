"""The registry actor: one detached Ray actor, the single writer of task state.

A thin binding of `RegistryCore` (core.py: state and transitions) and `Reads` (reads.py) to
Ray: the actor's options, its event loop, the journal in storage, dispatch to Ray
(dispatch.py) and the default middleware. It owns the Ray tasks it submits (so a client
that exits loses nothing) and stores every change before it acknowledges it; on a restart it
reloads the journal and resubmits every task that is not final.

`create_registry` lives here, reached by the client (connection.py) and the HTTP API alike;
nothing on the worker side imports it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from typing import Any

import ray

from raybeam import keys, middleware
from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE, Settings, positive_env
from raybeam.core import RegistryCore
from raybeam.dispatch import Dispatcher
from raybeam.errors import RaybeamError, StorageInUse
from raybeam.fencing import StorageLease, cluster_id
from raybeam.intake import Intake
from raybeam.journal import Journal
from raybeam.reads import Reads
from raybeam.storage import Storage

log = logging.getLogger("raybeam.registry")

#: seconds between moves of what the registry holds out of the cyclic collector's view
FREEZE_EVERY = 1.0
#: seconds between full collections of everything, frozen objects included
FULL_COLLECT_EVERY = 600.0
#: allocations between young collections (Python's default is 700)
YOUNG_COLLECTION = 10_000
#: young collections between collections of the middle generation, and those between
#: full ones: so many that neither comes on its own (freezing takes their place)
OLDER_COLLECTIONS = 1_000


async def keep_the_collector_young() -> None:
    """Nearly everything the registry makes lives on (records, until archived), so the
    cyclic collector's older generations only rescan survivors: one collection of the middle
    generation after a `map()` of 8,000 tasks took 40-60 ms (5-8 µs a task), a full one 77 ms.
    Records hold no reference cycles, so what has lived FREEZE_EVERY seconds goes into the
    permanent generation (`gc.freeze`) instead, and only young collections run on their own
    (1-3 µs a task); reference counting still frees frozen objects. Every
    FULL_COLLECT_EVERY seconds everything is unfrozen and collected once, so a cycle frozen
    while alive is not kept for ever."""
    gc.set_threshold(YOUNG_COLLECTION, OLDER_COLLECTIONS, OLDER_COLLECTIONS)
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(FREEZE_EVERY)
        if time.monotonic() - last_full > FULL_COLLECT_EVERY:
            gc.unfreeze()
            gc.collect()
            last_full = time.monotonic()
        else:
            # young garbage is collected before it is frozen (at most YOUNG_COLLECTION
            # objects are looked at): a lightly loaded registry makes too few allocations a
            # second for a young collection to come on its own
            gc.collect(0)
        gc.freeze()


# Not restartable by Ray on purpose: Ray's memory monitor kills "retriable" workers (actors
# with restarts left) first, and every running task dies with its owner, the registry. As a
# non-retriable worker, the oldest one on its node, it is the last one the monitor picks. The
# next API call (Python, HTTP, CLI) starts it again; it reloads its journal and resubmits.
@ray.remote(  # type: ignore[call-overload]
    num_cpus=0,
    # on the head node, which lives as long as the cluster does
    resources={"node:__internal_head__": 0.001},
    max_restarts=0,
    max_concurrency=10_000,
)
class Registry:
    core: RegistryCore
    reads: Reads
    intake: Intake

    def __init__(
        self,
        storage_url: str,
        public_url: str,
        output_url_expires: int,
        retention_seconds: int = 7 * 86400,
        fsync: bool = True,
    ) -> None:
        logging.getLogger("raybeam").setLevel(logging.INFO)
        # keys come from Ray's key-value store (published by the creator), never as actor
        # arguments, which Ray's dashboard and state API show
        signing_key, webhook_key = keys.configured_keys()
        self.storage = Storage(
            storage_url, signing_key=signing_key, webhook_key=webhook_key, public_url=public_url
        )
        self.settings = (output_url_expires, retention_seconds, fsync)
        self.incarnation = uuid.uuid4().hex[:8]
        self.storage_lease = StorageLease(
            self.storage.fs, self.storage.path("registry"), cluster_id(), self.incarnation
        )
        self.starting = asyncio.Lock()
        self.started_up = False
        # Resume unfinished work even if no client calls in after a restart.
        ray.get_runtime_context().current_actor.ping.remote()

    async def _ready(self, archive: bool = True) -> None:
        """Take the storage's lease (StorageInUse while another cluster's registry holds
        it), load the state, boot; once, before any call is answered. Then, unless the call
        needs no `archive` (it writes or reads live tasks only), wait until the archive's
        index is read too (the first time, in the background while other calls go on)."""
        if not self.started_up:
            async with self.starting:
                if not self.started_up:
                    began = time.perf_counter()
                    await asyncio.to_thread(self.storage_lease.acquire)
                    leased = time.perf_counter()
                    self.core = await asyncio.to_thread(self._load)
                    log.info(
                        "registry %s: lease %.3f s, state %.3f s (%d records)",
                        self.incarnation, leased - began, time.perf_counter() - leased,
                        len(self.core.tasks),
                    )  # fmt: skip
                    self.reads, self.intake = Reads(self.core), Intake(self.core)
                    self.core.commits.allowed = lambda: self.storage_lease.held
                    self.core.commits.current = self.storage_lease.current
                    self.core.commits.lost = self._lost
                    self.core.commits.fenced = self.storage_lease.give_up
                    self.core.spawn(self._renew_lease())
                    self.core.spawn(keep_the_collector_young())
                    self.started_up = True
        if not self.core.commits.allowed():  # fenced: answer nothing it cannot store
            raise StorageInUse(self._lost())
        await self.core.boot()
        if archive and not self.core.archive_ready:
            await self.core.archived()

    def _lost(self) -> str:
        return (
            f"this registry lost the storage's lease to "
            f"{self.storage_lease.taken_by or 'another registry'} and stopped writing; stop "
            "one of the two, then restart this one to load what the other wrote"
        )

    def _load(self) -> RegistryCore:
        output_url_expires, retention_seconds, fsync = self.settings
        return RegistryCore(
            Journal(self.storage.fs, self.storage.path("registry"), fsync=fsync),
            self.storage,
            output_url_expires=output_url_expires,
            retention_seconds=retention_seconds,
            archive_after=positive_env("RAYBEAM_ARCHIVE_AFTER_SECONDS", 300.0),
            incarnation=self.incarnation,
            dispatch=Dispatcher,
            middleware=middleware.default,
        )

    async def _renew_lease(self) -> None:
        lease = self.storage_lease
        while lease.held:  # at once first: loading the state may have taken a while
            try:
                await asyncio.to_thread(lease.renew)
            except Exception:  # storage away: try again; the lease outlives a few misses
                log.warning("could not renew the storage's lease", exc_info=True)
            # a lapsed lease holds every write back: try again soon
            await asyncio.sleep(lease.seconds / 3 if lease.current() else 0.5)

    async def ping(self) -> dict[str, Any]:
        """Live tasks held, and what could not be read: `load_problems` holds the archive's
        problems too once `archive_read` (its index is read after the first answer)."""
        await self._ready(archive=False)
        core = self.core
        return {
            "tasks": len(core.tasks),
            "load_problems": core.load_problems,
            "archive_read": core.archive_ready,
        }

    async def purge(self, older_than_seconds: float) -> int:
        """Forget final tasks that ended over `older_than_seconds` ago, outputs included."""
        await self._ready()
        return sum([await hook.purge(older_than_seconds) for hook in self.core.hooks])

    # ---- writes ---------------------------------------------------------------------

    async def register_queue(self, definition: dict[str, Any], blob: bytes) -> None:
        await self._ready(archive=False)
        await self.intake.register_queue(definition, blob)

    async def submit(
        self, queue: str, items: list[dict[str, Any]], client: str | None = None
    ) -> list[str]:
        """Store new tasks, then start them. Items: {"id", "payload", "overrides"}.

        A `client` holding a lease on the queue (see `lease`) fills its leased slots first.
        Idempotent by id: an id already stored is skipped.
        """
        await self._ready(archive=False)
        return await self.intake.submit(queue, items, client)

    async def submit_each(
        self, calls: list[tuple[str, list[dict[str, Any]]]]
    ) -> list[list[str] | RaybeamError]:
        """`submit` for several callers at once (the HTTP API's concurrent requests): each
        call is admitted or refused on its own, and all are stored in one write."""
        await self._ready(archive=False)
        return await self.intake.submit_each(calls)

    async def lease(self, queue: str, client: str, want: int) -> int:
        """Set aside up to `want` more slots for `client`'s next puts; returns its slots now."""
        await self._ready(archive=False)
        return self.intake.lease(queue, client, want)

    async def started(self, task_id: str, run: str, container_id: str) -> None:
        """A worker began an attempt. Stored with the next batch; nobody waits on this, and a
        registry that dies before storing it finds the task unstarted and runs it again."""
        await self._ready(archive=False)
        self.core.started(task_id, run, container_id)

    async def cancel(self, task_ids: list[str]) -> list[str]:
        await self._ready(archive=False)
        return await self.intake.cancel(task_ids)

    async def retry_tasks(
        self, task_ids: list[str] | None, queue: str | None, status: str | None, limit: int
    ) -> list[dict[str, str]]:
        """Requeue final tasks as new ones: `[{"task_id": new, "retry_of": old}]`."""
        await self._ready()
        return await self.intake.requeue(task_ids, queue, status, limit)

    async def progress(self, task_id: str, run: str, value: Any) -> None:
        """A running attempt's latest progress; fire and forget (workers coalesce)."""
        await self._ready(archive=False)
        self.core.progress(task_id, run, value)

    # ---- reads, answered from what is stored -----------------------------------------

    async def queue_info(self, name: str) -> dict[str, Any] | None:
        await self._ready(archive=False)
        return self.core.definition(name)

    async def get(self, task_id: str) -> dict[str, Any] | None:
        await self._ready()
        return await self.reads.get(task_id)

    async def history(self, task_id: str) -> list[tuple[str, float]] | None:
        """Every status the task has had, with the time it began."""
        await self._ready()
        return await self.reads.history(task_id)

    async def output_location(self, task_id: str, name: str | None) -> dict[str, Any] | None:
        """Where a task's output is stored: the storage URL and its key (first one by default)."""
        await self._ready()
        return await self.reads.output_location(task_id, name)

    async def output_key(self, output_id: str) -> str | None:
        """Where the output with this id is stored, None for an unknown id."""
        await self._ready()
        return await self.reads.output_key(output_id)

    async def exists(self, task_ids: list[str]) -> list[bool]:
        await self._ready()
        return await self.reads.exists(task_ids)

    async def statuses(self, task_ids: list[str]) -> dict[str, str | None]:
        """Each task's status name, None for an unknown id (one round trip for many)."""
        await self._ready()
        return await self.reads.statuses(task_ids)

    async def wait_final(self, task_id: str, timeout: float | None) -> dict[str, Any] | None:
        """The record once final, or as it is when `timeout` seconds pass first."""
        await self._ready()
        return await self.reads.wait_final(task_id, timeout)

    async def watch(self, task_id: str, seen: str | None, timeout: float) -> dict[str, Any] | None:
        """The record once its status differs from `seen` (or after `timeout` seconds)."""
        await self._ready()
        return await self.reads.watch(task_id, seen, timeout)

    async def wait_any(self, task_ids: list[str], timeout: float) -> list[str]:
        """The ids among `task_ids` that are final or unknown, waiting up to `timeout` seconds
        for the first one."""
        await self._ready()
        return await self.reads.wait_any(task_ids, timeout)

    async def list(
        self, queue: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records newest first; `cursor` is the id of the last record of the previous page."""
        await self._ready()
        return await self.reads.list(queue, status, limit, cursor)

    async def queue_stats(self) -> dict[str, dict[str, Any]]:
        await self._ready()
        return self.reads.queue_stats()

    async def metrics(self) -> dict[str, Any]:
        """Plain data for the HTTP API's `GET /metrics`: `queues` (as `queue_stats()`) and
        the latency histograms of `raybeam.middleware.metrics`."""
        await self._ready()
        return self.reads.metrics()


def create_registry(s: Settings) -> Any:
    """The registry actor, created with these settings (or the live one, if there is one)."""
    keys.publish_secrets(s, tokens=False)
    return Registry.options(  # type: ignore[attr-defined]
        name=REGISTRY_NAME,
        namespace=REGISTRY_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(s.storage_url, s.base_url, s.output_url_expires, s.retention_seconds, s.fsync)
