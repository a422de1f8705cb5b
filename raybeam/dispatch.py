"""Dispatch: how the registry turns attempts into work on Ray.

A plain queue's attempt becomes a Ray task (several tiny ones may share one, a "pack"); a
warm queue's goes to its `ContainerPool`. The dispatcher owns the Ray references, hands
every outcome back to the registry (`Host.settle`), and stops the Ray work of a task that
timed out or was cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray

from raybeam import codec
from raybeam.containers import ContainerPool, ResourceDemand
from raybeam.host import Host
from raybeam.lanes import Lane, capacity
from raybeam.record import TaskRecord, TaskSpec, TaskStatus
from raybeam.resources import pick_gpu_type
from raybeam.runner import remote_attempt
from raybeam.wire import Attempt, Outcome, failed, outcome_from

log = logging.getLogger("raybeam.dispatch")
PENDING, RUNNING = TaskStatus.PENDING, TaskStatus.RUNNING

#: tasks of a queue whose recent run time is below this (seconds) may share a Ray task
PACK_BELOW = 0.005
#: tasks started first from a big backlog of a queue whose task length is not known yet
PROBE = 8
#: seconds at most that the rest of that backlog waits for the first probe to finish
PROBE_WAIT = 1.0
#: seconds of its members' recent run time that a pack is sized to: each Ray task costs the
#: registry about 0.7 ms of CPU, so a 5 ms pack of no-op tasks spent 15 µs a task on it
PACK_RUN = 0.02
#: at most this many tasks share one Ray task
PACK_MAX = 200
#: seconds between storing new tasks and sending them to Ray: the answer to the caller goes
#: out first (sending holds the registry's GIL for a while), and more tasks join the batch
SEND_AFTER = 0.001
#: pickled functions up to this size travel inline with each task
INLINE_BLOB = 64 * 1024

Key = tuple[str, int | None, str]
Item = tuple[TaskRecord, Any, Attempt, dict[str, Any]]


def system_failure(exc: BaseException) -> Outcome:
    reason, retryable = classify_failure(exc)
    return failed(reason, retryable)


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


def pack_size(
    duration: float | None, backlog: int, cluster_cpus: float, options: dict[str, Any]
) -> int:
    """How many tasks share one Ray task: 1 unless the queue's tasks are known to be tiny
    (packing amortises Ray's own per-task cost, which dominates when a task takes a
    millisecond). A pack runs for about PACK_RUN seconds, and a backlog is spread over at
    least as many packs as the cluster runs such tasks at once; GPU tasks never pack."""
    if duration is None or duration > PACK_BELOW or options.get("num_gpus"):
        return 1
    at_once = cluster_cpus / max(options.get("num_cpus", 1), 0.01)
    return max(1, min(PACK_MAX, int(PACK_RUN / max(duration, 1e-4)), int(backlog / at_once)))


def max_calls(asked: int | None, options: dict[str, Any]) -> int | None:
    """The `max_calls` of a plain queue's remote function: as asked, else Ray's default,
    which is 1 for a task that takes GPUs (a fresh process each time, so GPU memory a
    framework keeps is given back). Ray applies that default only to GPUs named in
    `@ray.remote`, and attempts name theirs in `.options()`, so it is applied here.

    >>> max_calls(None, {"num_gpus": 1}), max_calls(0, {"num_gpus": 1}), max_calls(None, {})
    (1, 0, None)
    """
    if asked is None and options.get("num_gpus"):
        return 1
    return asked


def pack_options(options: dict[str, Any], node_cpus: float) -> dict[str, Any]:
    """A pack's Ray options: its tasks', but at least one CPU (at most a node's largest CPU
    count) where they ask for a fraction. A pack is a stream of tiny tasks run one after
    the other, so it never uses more than one CPU; a fraction would let Ray start a worker
    process per fraction (20 on 2 cores at `cpu=0.1`), each costing a second of CPU to start
    and taking turns on the cores, where one worker per core runs the stream fastest."""
    cpus = float(options.get("num_cpus", 1))
    if 0 < cpus < 1 and node_cpus > cpus:
        return {**options, "num_cpus": min(1.0, node_cpus)}
    return options


class Dispatcher:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.refs: dict[str, Any] = {}
        #: ids whose current submission is a member of a pack
        self.packed: set[str] = set()
        #: ids whose submissions go alone until they end: a pack died under them
        self.alone: set[str] = set()
        #: warm pools by queue and definition; a queue registered anew gets a new pool
        self.pools: dict[tuple[str, str], ContainerPool] = {}
        self.current: dict[str, tuple[str, str]] = {}
        self.demand = ResourceDemand()
        self.remotes: dict[tuple[Any, ...], Any] = {}
        #: waiting tasks of plain queues, by queue and Ray options (see lanes.py)
        self.lanes: dict[Key, Lane] = {}
        self.dirty: set[Key] = set()
        self.outbox_flush = False
        self.probed: set[Key] = set()
        #: lanes whose probe has not told yet
        self.probes: set[Key] = set()
        #: per spec (by identity): the lane key of its tasks, worked out once
        self.keys: dict[int, tuple[Any, Key]] = {}
        #: recent run time of a queue's tasks (moving average), which decides packing
        self.durations: dict[str, float] = {}
        self.blob_refs: dict[str, Any] = {}
        self.resources: tuple[float, dict[str, float]] = (-10.0, {})
        #: (when read, the most CPUs one node has): a pack asks for no more than fits
        self.node_cpus: tuple[float, float] = (-100.0, 1.0)

    # ---- the Dispatch protocol ---------------------------------------------------------

    def add_function(self, digest: str, blob: bytes) -> None:
        # small functions travel inline with each task (cheaper than a fetch from the object
        # store), larger ones by reference
        self.blob_refs.setdefault(digest, blob if len(blob) <= INLINE_BLOB else ray.put(blob))

    def has_function(self, digest: str) -> bool:
        return digest in self.blob_refs

    def observe(self, queue: str, duration: float) -> None:
        seen = self.durations.get(queue, duration)
        self.durations[queue] = 0.8 * seen + 0.2 * duration
        if self.probes:
            for key in [k for k in self.probes if k[0] == queue]:
                self._release(key)  # the probe has told

    def containers(self, queue: str) -> int | None:
        pools = [p for (q, _), p in self.pools.items() if q == queue]
        return sum(p.size for p in pools) if pools else None

    def ended(self, rec: TaskRecord) -> None:
        self.refs.pop(rec.id, None)
        self.packed.discard(rec.id)
        if self.alone:  # nearly always empty
            self.alone.discard(rec.id)

    def submit(self, rec: TaskRecord, ahead: bool = False) -> None:
        """Send `rec` to Ray when its lane has room; `ahead` puts it before the tasks of its
        priority that wait (a pack member handed back unrun was ahead of them already)."""
        self.submit_all([rec], ahead)

    def submit_all(self, records: Sequence[TaskRecord], ahead: bool = False) -> None:
        """`submit` each of `records` in turn. Records of one spec and queue in a row (a
        `map()` call's, a batch of puts) share the route worked out for the first: the
        function, the warm pool or the lane; a GPU type is picked for each attempt."""
        route: tuple[TaskSpec, str, Any, ContainerPool | Lane, dict[str, Any], Key] | None = None
        marked: list[Key] = []
        for rec in records:
            spec = rec.spec
            if route is None or route[0] is not spec or route[1] != rec.queue or spec.gpu_types:
                options = spec.ray_options  # never changed: a spec is shared by many records
                if spec.gpu_types:
                    gpu_type = pick_gpu_type(spec.gpu_types, self._cluster_resources())
                    if gpu_type is not None:
                        options = {**options, "accelerator_type": gpu_type}
                key = self._lane_key(rec, options)
                to: ContainerPool | Lane | None = self.pool(rec)
                if to is None:
                    to = self.lanes.get(key)
                    if to is None:
                        to = self.lanes[key] = Lane()
                route = (spec, rec.queue, self.blob_refs.get(spec.function), to, options, key)
            _, _, blob, to, options, key = route
            payload = self.host.payload(rec.id)
            if blob is None or payload is None:
                missing = "function" if blob is None else "arguments"
                self.host.fail(rec, TaskStatus.FAILED, f"the task's {missing} were not found")
                continue
            rec.run = self.host.new_run()
            attempt = Attempt(
                task_id=rec.id,
                queue=rec.queue,
                run=rec.run,
                attempt=rec.attempts + 1,
                payload=payload,
                callback_url=spec.callback_url,
                timeout=spec.timeout,
                storage_url=self.host.storage_url,
            )
            if isinstance(to, ContainerPool):
                to.enqueue(attempt, spec.function, blob, options, rec.priority)
                continue
            to.push(rec.priority, (rec, blob, attempt, options), ahead)
            if not marked or marked[-1] != key:
                marked.append(key)
        for key in marked:
            self._mark(key)

    def _lane_key(self, rec: TaskRecord, options: dict[str, Any]) -> Key:
        """The lane of `rec` sent with these Ray options: by queue, max_calls and options.
        Worked out once per spec when they are the spec's own (the records of a queue share
        theirs); a GPU type picked for this attempt makes options of its own."""
        spec = rec.spec
        own = options is spec.ray_options
        known = self.keys.get(id(spec)) if own else None
        if known is not None and known[0] is spec and known[1][0] == rec.queue:
            return known[1]
        key = (rec.queue, spec.max_calls, codec.canonical(options))
        if own:
            if len(self.keys) >= 4096:
                self.keys.clear()
            self.keys[id(spec)] = (spec, key)
        return key

    def stop(self, rec: TaskRecord) -> None:
        ref = self.refs.pop(rec.id, None)
        for (queue, _), pool in self.pools.items():
            if queue == rec.queue:
                pool.stop_task(rec.id)
        if ref is not None and rec.id in self.packed and rec.status is not RUNNING:
            return  # a pack member not started: its outcome will not count, its mates run on
        if ref is not None:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                log.warning("could not cancel the Ray task of %s", rec.id, exc_info=True)

    async def upkeep(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            for key, pool in list(self.pools.items()):
                try:
                    pool.reap()
                    if self.current.get(key[0]) != key and pool.idle:
                        del self.pools[key]  # a replaced definition's pool, done
                except Exception:
                    log.exception("container upkeep failed for queue %s", pool.queue)
            bundles = self.demand.due([b for p in self.pools.values() for b in p.demand()])
            if bundles is not None:
                await asyncio.to_thread(self.demand.send, bundles)

    # ---- plain queues: Ray tasks, alone or packed -------------------------------------

    def _cluster_resources(self) -> dict[str, float]:
        at, res = self.resources
        if time.monotonic() - at > 5:
            res = ray.cluster_resources()  # type: ignore[no-untyped-call]
            self.resources = (time.monotonic(), res)
        return res

    def _node_cpus(self) -> float:
        """The most CPUs one alive node has (read again once a minute: node shapes change
        rarely, and the list of nodes is long on a big cluster)."""
        at, cpus = self.node_cpus
        if time.monotonic() - at > 60:
            nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
            cpus = max([n.get("Resources", {}).get("CPU", 0.0) for n in nodes] or [1.0])
            self.node_cpus = (time.monotonic(), cpus)
        return cpus

    def _flush(self) -> None:
        """Send what the lanes may send now: highest priority first, one Ray task each or,
        for queues of tiny tasks with a backlog, a pack of them per Ray task."""
        self.outbox_flush = False
        cluster = self._cluster_resources()
        for key in list(self.dirty):
            self.dirty.discard(key)
            lane = self.lanes[key]
            queue, options = key[0], codec.loads(key[2])
            if queue not in self.durations and len(lane) > PROBE and key not in self.probed:
                # A big backlog on a queue whose task length is unknown: start a few, and
                # decide how to send the rest once they tell (or PROBE_WAIT has passed).
                self.probed.add(key)
                self.probes.add(key)
                lane.probing = True
                asyncio.get_running_loop().call_later(PROBE_WAIT, self._release, key)
            # tasks of the queue not started yet, those sent already included: puts arrive a
            # few per turn, and still form a backlog when workers fall behind
            backlog = max(len(lane), self.host.waiting(queue))
            size = pack_size(self.durations.get(queue), backlog, cluster.get("CPU", 1.0), options)
            sent = options if size == 1 else pack_options(options, self._node_cpus())
            room = lane.room(capacity(sent, cluster))
            if lane.probing:
                room = max(0, PROBE - lane.in_flight)
            while room > 0 and lane:
                chunk = [it for it in lane.pop(size) if it[0].is_live(it[2].run)]
                # a task whose pack died under it runs alone until it ends: its retries
                # must not take new mates down with them
                for item in [it for it in chunk if it[0].id in self.alone]:
                    chunk.remove(item)
                    self._send(key, [item])
                    room -= 1
                if chunk:
                    self._send(key, chunk)
                    room -= 1

    def _mark(self, key: Key) -> None:
        self.dirty.add(key)
        if not self.outbox_flush:
            self.outbox_flush = True
            asyncio.get_running_loop().call_later(SEND_AFTER, self._flush)

    def _sent_done(self, key: Key) -> None:
        """A Ray task of this lane finished: room for the next."""
        lane = self.lanes[key]
        lane.in_flight -= 1
        if lane:
            self._mark(key)

    def _send(self, key: Key, chunk: list[Item]) -> None:
        rec, blob, attempt, options = chunk[0]
        packed = len(chunk) > 1
        if packed:
            options = pack_options(options, self._node_cpus())
        fn = self._remote_fn(key, rec, options, packed)
        self.lanes[key].in_flight += 1
        if len(chunk) == 1:
            ref = fn.remote(rec.spec.function, blob, *attempt.fields())
            self.refs[rec.id] = ref
            self.packed.discard(rec.id)
            self.host.spawn(self.watch(rec.id, rec.run, ref, lambda _: self._sent_done(key)))
            return
        ref = fn.remote(rec.spec.function, blob, [a.fields() for _, _, a, _ in chunk])
        for member, _, _, _ in chunk:
            self.refs[member.id] = ref
            self.packed.add(member.id)
        members = [(m.id, m.run) for m, _, _, _ in chunk]
        self.host.spawn(self._watch_pack(key, members, ref))

    def _release(self, key: Key) -> None:
        lane = self.lanes.get(key)
        self.probes.discard(key)
        if lane is not None and lane.probing:
            lane.probing = False
            self._mark(key)

    def _remote_fn(self, key: Key, rec: TaskRecord, options: dict[str, Any], packed: bool) -> Any:
        """The remote function bound to a lane's options (binding is costly, so it is cached)."""
        bound = (*key, packed, options.get("num_cpus"))  # a pack's CPUs follow the nodes
        fn = self.remotes.get(bound)
        if fn is None:
            fn = remote_attempt(max_calls(rec.spec.max_calls, options), packed).options(
                name=f"raybeam:{rec.queue}", **options
            )
            self.remotes[bound] = fn
        return fn

    async def watch(
        self,
        task_id: str,
        run: str,
        ref: Any,
        done: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        error: BaseException | None = None
        try:
            outcome: Outcome = await ref
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
            outcome = system_failure(exc)
        if done is not None:
            done(error)
        await self.host.settle(task_id, run, outcome)

    async def _watch_pack(self, key: Key, members: list[tuple[str, str]], ref: Any) -> None:
        """Settle the members of a pack once it returns. Members it left unrun (it ran out
        of time) go back to their lane. When the pack dies (a crash, or a kill for one
        member's timeout or cancel), a member that reported its start ran long and fails,
        counted; the others run again alone, uncounted: the one that took the worker down
        then fails alone, counted, and stops at its retries, and its mates are not held up
        by it again."""
        try:
            await self._settle_pack(members, ref)
        finally:
            self._sent_done(key)

    async def _settle_pack(self, members: list[tuple[str, str]], ref: Any) -> None:
        try:
            outcomes = [outcome_from(values) for values in await ref]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for task_id, run in members:
                rec = self.host.task(task_id)
                if rec is None or not rec.is_live(run):
                    continue
                if rec.status is RUNNING:  # it reported a start: it ran, so it counts
                    await self.host.settle(task_id, run, system_failure(exc))
                else:
                    rec.run = ""
                    self.alone.add(task_id)
                    self.submit(rec)
            return
        ran = len(outcomes)
        await self.host.settle_many(
            [(*member, o) for member, o in zip(members[:ran], outcomes, strict=True)]
        )
        # never started: back to the head of their lane, in their order (the last first, as
        # each goes ahead of the others)
        for task_id, run in reversed(members[ran:]):
            rec = self.host.task(task_id)
            if rec is not None and rec.is_live(run):
                rec.run = ""
                self.submit(rec, ahead=True)

    # ---- warm queues ------------------------------------------------------------------

    def pool(self, rec: TaskRecord) -> ContainerPool | None:
        definition = self.host.definition(rec.queue) or {}
        warm = definition.get("warm")
        if not warm:
            return None
        shape = [warm, rec.spec.function, rec.spec.ray_options, rec.spec.gpu_types]
        key = (rec.queue, codec.canonical(shape))
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = ContainerPool(self.host, rec.queue, warm, self.watch)
        if self.current.get(rec.queue) != key and self._is_latest(rec, definition):
            old = self.pools.get(self.current.get(rec.queue, ("", "")))
            if old is not None:
                old.retire()
            self.current[rec.queue] = key
        return pool

    @staticmethod
    def _is_latest(rec: TaskRecord, definition: dict[str, Any]) -> bool:
        spec = definition.get("spec", {})
        return bool(spec.get("function") == rec.spec.function)
