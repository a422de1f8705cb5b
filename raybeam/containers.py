"""Warm workers ("containers") and the queue-depth autoscaler.

A queue with `on_start` or `keep_warm_seconds > 0` runs its tasks on containers: Ray actors
that hold the queue's resources, run `on_start` once, and then run up to `workers` tasks at a
time. The dispatcher keeps one `ContainerPool` per queue definition (a queue registered anew
gets a new pool; the old one finishes its tasks and stops): it starts containers as the
queue's depth asks for them, hands them tasks, replaces one whose task timed out or was
cancelled, and stops idle ones after `keep_warm_seconds`. `ResourceDemand` sends the
autoscaler one request for all pools together.
"""

from __future__ import annotations

import bisect
import ctypes
import dataclasses
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import ray

from raybeam.errors import InvalidConfiguration
from raybeam.runner import execute, load_bundle
from raybeam.wire import Attempt, Outcome

if TYPE_CHECKING:
    from raybeam.host import Host
    from raybeam.record import TaskRecord

#: how a pool has an attempt watched: (task_id, run, ref, done callback)
Watch = Callable[[str, str, Any, Callable[[BaseException | None], None]], Coroutine[Any, Any, None]]

log = logging.getLogger("raybeam.containers")


@dataclasses.dataclass(frozen=True)
class QueueDepthAutoscaler:
    """Containers = ceil(unfinished tasks / tasks_per_container), within [min, max].

    >>> @task_queue(keep_warm_seconds=60, autoscaler=QueueDepthAutoscaler(max_containers=4))
    ... def embed(text: str) -> list[float]: ...
    """

    min_containers: int = 0
    max_containers: int = 1
    tasks_per_container: int = 1

    def __post_init__(self) -> None:
        for name in ("min_containers", "max_containers", "tasks_per_container"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidConfiguration(f"{name} must be an integer >= 0, got {value!r}")
        if self.max_containers < max(1, self.min_containers):
            raise InvalidConfiguration(
                "max_containers must be at least 1 and at least min_containers, got "
                f"min={self.min_containers} max={self.max_containers}"
            )
        if self.tasks_per_container < 1:
            raise InvalidConfiguration("tasks_per_container must be at least 1")

    def wanted(self, depth: int) -> int:
        return max(
            self.min_containers,
            min(self.max_containers, math.ceil(depth / self.tasks_per_container)),
        )


_CLONE_FS = 0x00000200
_thread_state = threading.local()


def _private_cwd() -> None:
    """Give this thread its own working directory (Linux), so concurrent tasks each have one."""
    if getattr(_thread_state, "private", False):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_FS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_FS) failed; set workers=1")
    _thread_state.private = True


class Container:
    """A warm worker: loads the queue's function and runs `on_start` once."""

    def __init__(self, digest: str, blob: bytes, workers: int) -> None:
        self.bundle = load_bundle(digest, blob)
        self.workers = workers
        self.id = ray.get_runtime_context().get_actor_id()
        self.on_start_value = self.bundle.on_start() if self.bundle.on_start else None

    def ready(self) -> str:
        return str(self.id)

    def run(self, *fields: Any) -> Outcome:
        if self.workers > 1:
            _private_cwd()
        return execute(self.bundle, Attempt(*fields), str(self.id), self.on_start_value)


RemoteContainer = ray.remote(max_restarts=0)(Container)


@dataclasses.dataclass
class Slot:
    handle: Any
    id: str
    active: set[str] = dataclasses.field(default_factory=set)
    idle_since: float = dataclasses.field(default_factory=time.monotonic)


_arrivals = itertools.count()


@dataclasses.dataclass
class Waiting:
    attempt: Attempt
    digest: str
    blob: Any
    options: dict[str, Any]
    #: the line's order: higher priority first, then first come
    order: tuple[int, int] = dataclasses.field(default=(0, 0))


def _request_resources(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


class ResourceDemand:
    """One autoscaler request for what every warm pool wants, sent again when it changes,
    lower as well as higher (Ray keeps only the latest request: several pools asking on
    their own would overwrite each other, and a request never lowered keeps every node)."""

    def __init__(
        self, request: Callable[[list[dict[str, float]]], None] = _request_resources
    ) -> None:
        self.request = request
        self.sent: list[dict[str, float]] | None = None

    def due(self, bundles: list[dict[str, float]]) -> list[dict[str, float]] | None:
        """The request to send for this total demand, or None when it is the one sent."""
        if bundles == (self.sent if self.sent is not None else []):
            return None
        self.sent = bundles
        return bundles

    def send(self, bundles: list[dict[str, float]]) -> None:
        try:
            self.request(bundles)
        except Exception:
            log.debug("no autoscaler took the resource request", exc_info=True)


class ContainerPool:
    """The containers of one warm queue definition, as the registry sees them."""

    def __init__(self, host: Host, queue: str, warm: dict[str, Any], watch: Watch) -> None:
        self.host = host
        self.queue = queue
        self.watch = watch
        self.keep_warm = float(warm["keep_warm_seconds"])
        self.workers = int(warm["workers"])
        self.scaler = QueueDepthAutoscaler(**warm["autoscaler"])
        self.slots: dict[str, Slot] = {}
        self.waiting: deque[Waiting] = deque()
        self.bundle: dict[str, float] | None = None
        #: a pool of an older definition of the queue: it serves what it has, then stops
        self.retired = False

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def idle(self) -> bool:
        return not self.slots and not self.waiting

    def retire(self) -> None:
        self.retired = True

    def enqueue(
        self,
        attempt: Attempt,
        digest: str,
        blob: Any,
        options: dict[str, Any],
        priority: int = 0,
    ) -> None:
        if self.bundle is None:
            self.bundle = {"CPU": float(options.get("num_cpus", 1))}
            if options.get("num_gpus"):
                self.bundle["GPU"] = float(options["num_gpus"])
        waiting = Waiting(attempt, digest, blob, options, (-priority, next(_arrivals)))
        if not self.waiting or self.waiting[-1].order <= waiting.order:
            self.waiting.append(waiting)
        else:  # a higher priority than the last in line: it goes before the lower ones
            index = bisect.bisect_right([w.order for w in self.waiting], waiting.order)
            self.waiting.insert(index, waiting)
        self.pump()

    def _current(self, attempt: Attempt) -> TaskRecord | None:
        rec = self.host.task(attempt.task_id)
        if rec is None or not rec.is_live(attempt.run):
            return None
        return rec

    def wanted(self) -> int:
        """Containers this pool should have now."""
        if self.retired:  # never grows, but serves what waits
            return max(self.size, 1 if self.waiting else 0)
        return self.scaler.wanted(self.host.depth(self.queue))

    def demand(self) -> list[dict[str, float]]:
        """The resource bundles this pool asks the autoscaler for."""
        if self.bundle is None:
            return []
        return [dict(self.bundle)] * self.wanted()

    def pump(self) -> None:
        """Scale to the queue's depth, then hand waiting tasks to containers with room."""
        while self.waiting and self._current(self.waiting[0].attempt) is None:
            self.waiting.popleft()
        wanted = self.wanted()
        template = self.waiting[0] if self.waiting else None
        while template is not None and self.size < wanted:
            self._start(template)
        for slot in sorted(self.slots.values(), key=lambda s: len(s.active)):
            while self.waiting and len(slot.active) < self.workers:
                item = self.waiting.popleft()
                if self._current(item.attempt) is not None:
                    self._dispatch(slot, item.attempt)

    def _start(self, template: Waiting) -> None:
        handle: Any = RemoteContainer.options(
            max_concurrency=self.workers, **template.options
        ).remote(template.digest, template.blob, self.workers)
        slot = Slot(handle=handle, id=handle._actor_id.hex())
        self.slots[slot.id] = slot

    def _dispatch(self, slot: Slot, attempt: Attempt) -> None:
        slot.active.add(attempt.task_id)
        ref = slot.handle.run.remote(*attempt.fields())

        def done(error: BaseException | None) -> None:
            slot.active.discard(attempt.task_id)
            slot.idle_since = time.monotonic()
            if isinstance(error, ray.exceptions.ActorDiedError):
                self.slots.pop(slot.id, None)
            self.pump()

        self.host.spawn(self.watch(attempt.task_id, attempt.run, ref, done))

    def stop_task(self, task_id: str) -> None:
        """Stop a task wherever it is: off the waiting line, or by replacing its container."""
        self.waiting = deque(w for w in self.waiting if w.attempt.task_id != task_id)
        for slot in list(self.slots.values()):
            if task_id in slot.active:
                self._stop(slot)
        self.pump()

    def _stop(self, slot: Slot) -> None:
        self.slots.pop(slot.id, None)
        try:
            ray.kill(slot.handle)
        except Exception:
            log.warning("could not stop container %s", slot.id, exc_info=True)

    def reap(self) -> None:
        """Stop containers idle for `keep_warm_seconds`, down to `min_containers` (none for
        a retired pool)."""
        now = time.monotonic()
        floor = 0 if self.retired else self.scaler.min_containers
        for slot in sorted(self.slots.values(), key=lambda s: s.idle_since):
            if self.size <= floor:
                break
            if not slot.active and not self.waiting and now - slot.idle_since >= self.keep_warm:
                self._stop(slot)
