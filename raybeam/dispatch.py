"""Dispatch: how the registry turns attempts into work on Ray.

A plain queue's attempt becomes a Ray task (several tiny ones may share one); a warm queue's
goes to its `ContainerPool`. The dispatcher owns the Ray references, hands every outcome back
to the registry (`Registry._settle`), and stops the Ray work of a task that timed out or was
cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from raybeam.containers import ContainerPool
from raybeam.record import TaskRecord, TaskStatus
from raybeam.resources import pick_gpu_type
from raybeam.runner import Attempt, remote_attempt

log = logging.getLogger("raybeam.dispatch")
PENDING, RUNNING = TaskStatus.PENDING, TaskStatus.RUNNING

#: tasks of a queue whose recent run time is below this (seconds) may share a Ray task
PACK_BELOW = 0.005
#: tasks started first from a big backlog of a queue whose task length is not known yet
PROBE = 8
#: seconds at most that the rest of that backlog waits for the first probe to finish
PROBE_WAIT = 1.0
#: at most this many tasks share one Ray task
PACK_MAX = 16
#: seconds between storing new tasks and sending them to Ray: the answer to the caller goes
#: out first (sending holds the registry's GIL for a while), and more tasks join the batch
SEND_AFTER = 0.001
#: pickled functions up to this size travel inline with each task
INLINE_BLOB = 64 * 1024


def _failure(exc: BaseException) -> dict[str, Any]:
    reason, retryable = classify_failure(exc)
    return {"ok": False, "retryable": retryable, "error": reason, "outputs": []}


def classify_failure(exc: BaseException) -> tuple[str, bool]:
    """A system failure of an attempt as (failure_reason, retryable)."""
    ex = ray.exceptions
    if isinstance(exc, ex.OutOfMemoryError):
        return f"out of memory: {exc}", True
    if isinstance(exc, ex.NodeDiedError) or (
        "node" in str(exc).lower() and "died" in str(exc).lower()
    ):
        return f"node lost: {exc}", True
    if isinstance(exc, ex.WorkerCrashedError):
        return f"worker crashed: {exc}", True
    if isinstance(exc, ex.ActorDiedError):
        return f"container stopped: {exc}", True
    if isinstance(exc, ex.RuntimeEnvSetupError):
        return f"could not set up the queue's image (runtime_env): {exc}", False
    if isinstance(exc, ex.TaskCancelledError):
        return "the attempt was cancelled by Ray", True
    return f"{type(exc).__name__}: {exc}", True


class Dispatcher:
    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.refs: dict[str, ray.ObjectRef[Any]] = {}
        self.pools: dict[str, ContainerPool] = {}
        self.remotes: dict[tuple[str, int | None, str, bool], Any] = {}
        self.outbox: dict[tuple[str, int | None, str], list[tuple[Any, ...]]] = {}
        self.outbox_flush = False
        #: submissions held back while a probe finds out how long a queue's tasks take
        self.held: dict[tuple[str, int | None, str], list[tuple[Any, ...]]] = {}
        self.probed: set[tuple[str, int | None, str]] = set()
        #: recent run time of a queue's tasks (moving average), which decides packing
        self.durations: dict[str, float] = {}
        self.blob_refs: dict[str, Any] = {}
        self.resources: tuple[float, dict[str, float]] = (0.0, {})

    def add_function(self, digest: str, blob: bytes) -> None:
        self.blob_refs.setdefault(digest, blob if len(blob) <= INLINE_BLOB else ray.put(blob))

    def observe(self, queue: str, duration: float) -> None:
        seen = self.durations.get(queue, duration)
        self.durations[queue] = 0.8 * seen + 0.2 * duration
        for key in [k for k in self.held if k[0] == queue]:  # the probe has told
            self._release(key)

    def _cluster_resources(self) -> dict[str, float]:
        at, res = self.resources
        if time.monotonic() - at > 5:
            res = ray.cluster_resources()  # type: ignore[no-untyped-call]
            self.resources = (time.monotonic(), res)
        return res

    def _blob_ref(self, digest: str) -> Any:
        """The pickled function for a submission: small ones travel inline with each task
        (cheaper than a fetch from the object store), larger ones by reference."""
        ref = self.blob_refs.get(digest)
        if ref is None:
            blob = self.registry.journal.load_blob(f"{digest}.pkl")
            if blob is None:
                return None
            ref = self.blob_refs[digest] = blob if len(blob) <= INLINE_BLOB else ray.put(blob)
        return ref

    def submit(self, rec: TaskRecord) -> None:
        blob = self._blob_ref(rec.spec.function)
        if blob is None:
            rec.failure_reason = "the queue's function was not found in storage"
            self.registry._finish(
                rec, TaskStatus.FAILED if rec.status is not PENDING else TaskStatus.CANCELLED
            )
            return
        self.registry.submissions += 1
        rec.run = f"{self.registry.incarnation}-{self.registry.submissions}"
        options = dict(rec.spec.ray_options)
        if rec.spec.gpu_types:
            gpu_type = pick_gpu_type(rec.spec.gpu_types, self._cluster_resources())
            if gpu_type is not None:
                options["accelerator_type"] = gpu_type
        attempt = Attempt(
            task_id=rec.id,
            queue=rec.queue,
            run=rec.run,
            attempt=rec.attempts + 1,
            payload=self.registry.payloads[rec.id],
            callback_url=rec.spec.callback_url,
            timeout=rec.spec.timeout,
            storage_url=self.registry.storage_url,
        )
        pool = self.pool(rec.queue)
        if pool is not None:
            pool.enqueue(attempt, rec.spec.function, blob, options)
            return
        key = (rec.queue, rec.spec.max_calls, json.dumps(options, sort_keys=True))
        self.outbox.setdefault(key, []).append((rec, blob, attempt, options))
        if not self.outbox_flush:
            self.outbox_flush = True
            asyncio.get_running_loop().call_later(SEND_AFTER, self._flush)

    def _flush(self) -> None:
        """Submit what `submit` queued in the last SEND_AFTER: one Ray task each, or, for
        queues of tiny tasks with a backlog, a few per Ray task (packing amortises Ray's own
        per-task cost, which dominates when a task takes a millisecond)."""
        self.outbox_flush = False
        outbox, self.outbox = self.outbox, {}
        for key, items in outbox.items():
            queue = key[0]
            if queue not in self.durations and len(items) > PROBE and key not in self.probed:
                self.probed.add(key)
                # A big backlog on a queue whose task length is unknown: start a few, and
                # decide how to send the rest once they tell (or PROBE_WAIT has passed).
                self.held[key] = items[PROBE:]
                items = items[:PROBE]
                asyncio.get_running_loop().call_later(PROBE_WAIT, self._release, key)
            elif key in self.held:
                self.held[key].extend(items)
                continue
            # tasks of the queue not started yet, those sent in earlier turns included: puts
            # arrive a few per turn, and still form a backlog when workers fall behind
            waiting = self.registry.depth[queue] - self.registry.running[queue]
            size = self._pack_size(queue, max(len(items), waiting), items[0][3])
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                rec, blob, attempt, options = chunk[0]
                fn = self._remote_fn(rec, options, packed=len(chunk) > 1)
                if len(chunk) == 1:
                    ref = fn.remote(rec.spec.function, blob, *attempt.fields())
                    self.refs[rec.id] = ref
                    self.registry._spawn(self.watch(rec.id, rec.run, ref))
                    continue
                ref = fn.remote(rec.spec.function, blob, [a.fields() for _, _, a, _ in chunk])
                for member, _, _, _ in chunk:
                    self.refs[member.id] = ref
                self.registry._spawn(self._watch_pack([(m.id, m.run) for m, _, _, _ in chunk], ref))

    def _release(self, key: tuple[str, int | None, str]) -> None:
        items = [item for item in self.held.pop(key, []) if item[0].is_live(item[2].run)]
        if items:
            self.outbox.setdefault(key, []).extend(items)
            self._flush()

    def _pack_size(self, queue: str, backlog: int, options: dict[str, Any]) -> int:
        duration = self.durations.get(queue)
        if duration is None or duration > PACK_BELOW or options.get("num_gpus"):
            return 1
        # a pack of tiny tasks runs for about PACK_BELOW seconds, and a backlog is spread
        # over at least as many packs as the cluster runs such tasks at once
        at_once = self._cluster_resources().get("CPU", 1.0) / max(options.get("num_cpus", 1), 0.01)
        return max(1, min(PACK_MAX, int(PACK_BELOW / max(duration, 1e-4)), int(backlog / at_once)))

    def _remote_fn(self, rec: TaskRecord, options: dict[str, Any], packed: bool = False) -> Any:
        """The remote function bound to these options (binding is costly, so it is cached)."""
        key = (rec.queue, rec.spec.max_calls, json.dumps(options, sort_keys=True), packed)
        fn = self.remotes.get(key)
        if fn is None:
            fn = remote_attempt(rec.spec.max_calls, packed).options(
                name=f"raybeam:{rec.queue}", **options
            )
            self.remotes[key] = fn
        return fn

    def pool(self, queue: str) -> ContainerPool | None:
        pool = self.pools.get(queue)
        if pool is None:
            warm = self.registry.queues.get(queue, {}).get("warm")
            if not warm:
                return None
            pool = self.pools[queue] = ContainerPool(self.registry, queue, warm)
        return pool

    async def upkeep(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            for pool in list(self.pools.values()):
                try:
                    pool.reap()
                except Exception:
                    log.exception("container upkeep failed for queue %s", pool.queue)

    async def watch(
        self,
        task_id: str,
        run: str,
        ref: ray.ObjectRef[Any],
        done: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        error: BaseException | None = None
        try:
            outcome: dict[str, Any] = await ref
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
            outcome = _failure(exc)
        if done is not None:
            done(error)
        await self.registry._settle(task_id, run, outcome)

    async def _watch_pack(self, members: list[tuple[str, str]], ref: ray.ObjectRef[Any]) -> None:
        try:
            outcomes: list[dict[str, Any]] = await ref
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The whole pack failed (a crash, or a kill for one member's timeout or cancel):
            # the member that was running failed; the ones that never started run again.
            settles = []
            for task_id, run in members:
                rec = self.registry.tasks.get(task_id)
                if rec is None or not rec.is_live(run):
                    continue
                if rec.status is RUNNING:
                    settles.append(self.registry._settle(task_id, run, _failure(exc)))
                else:
                    rec.run = ""
                    self.submit(rec)
            await asyncio.gather(*settles)
            return
        await asyncio.gather(
            *(self.registry._settle(t, r, o) for (t, r), o in zip(members, outcomes, strict=True))
        )

    def stop(self, rec: TaskRecord) -> None:
        ref = self.refs.pop(rec.id, None)
        pool = self.pools.get(rec.queue)
        if pool is not None:
            pool.stop_task(rec.id)
        elif ref is not None:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                log.warning("could not cancel the Ray task of %s", rec.id, exc_info=True)
