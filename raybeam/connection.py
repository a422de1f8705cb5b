"""Reaching the registry: joining Ray, finding (or creating) the registry actor, calls that
survive its restarts, and `.put()` loops sent without a round trip per put (`Pipeline`)."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import threading
import time
import uuid
from typing import Any

import ray

from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE, settings
from raybeam.context import at_attempt_end
from raybeam.errors import RaybeamError
from raybeam.leases import LEASE_SECONDS
from raybeam.registry import create_registry

log = logging.getLogger("raybeam")
_lock = threading.Lock()
_handle: Any = None
_handle_session: str | None = None


def ensure_ray() -> None:
    """Connect to `RAY_ADDRESS` when set; otherwise join or start a local Ray."""
    if ray.is_initialized():
        return
    with _lock:
        if ray.is_initialized():
            return
        address = settings().ray_address or None
        if address is None:
            # A local Ray binds loopback only with this set (see README, "Local Ray").
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Ray's start-up chatter (token notice, dashboard link) is not the user's business.
        ray.init(
            address=address,
            logging_level=logging.ERROR,
            log_to_driver=True,
            include_dashboard=False if address is None else None,
        )


def _session() -> str:
    ensure_ray()
    ctx = ray.get_runtime_context()
    return f"{ctx.get_job_id()}@{ctx.gcs_address}"


def registry() -> Any:
    """The registry actor's handle; created (or created again) with the settings in force."""
    global _handle, _handle_session
    ensure_ray()
    session = _session()
    with _lock:
        if _handle is None or _handle_session != session:
            try:
                _handle = ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
            except ValueError:
                _handle = create_registry(settings())
            _handle_session = session
        return _handle


def forget_registry() -> None:
    """Drop the cached handle, so the next call finds or creates a live registry."""
    global _handle
    with _lock:
        _handle = None


#: Ray does not restart the registry (see Registry); raybeam's callers start it again.
_GONE = (
    ray.exceptions.RayActorError,  # died, or unavailable while it restarts
    ray.exceptions.OutOfMemoryError,  # the memory monitor stopped it mid-call
)
_RETRIES = 8


def _unwrap(exc: ray.exceptions.RayTaskError) -> BaseException:
    return exc.cause if isinstance(exc.cause, RaybeamError) else exc


def _backoff(attempt: int) -> float | None:
    """After the registry was lost: seconds to wait before trying again, None to give up."""
    if attempt == _RETRIES - 1:
        return None
    forget_registry()
    return float(min(0.2 * 2.0**attempt, 2.0))


def call(method: str, *args: Any, timeout: float | None = None) -> Any:
    """Call a registry method and wait for its answer; raybeam errors come back as themselves.

    A registry that died is started again (it reloads its state) and the call repeated, so
    registry methods are idempotent. Puts sent without waiting are answered first.
    """
    pipeline.collect()
    for attempt in range(_RETRIES):
        try:
            return ray.get(getattr(registry(), method).remote(*args), timeout=timeout)
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
        except _GONE:
            if (delay := _backoff(attempt)) is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


async def acall(method: str, *args: Any) -> Any:
    """`call` for asyncio code (the HTTP API)."""
    for attempt in range(_RETRIES):
        try:
            handle = _handle if _handle is not None else await asyncio.to_thread(registry)
            return await getattr(handle, method).remote(*args)
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
        except _GONE:
            if (delay := _backoff(attempt)) is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


#: the most slots a client leases on a queue at once
MAX_LEASE = 4096
#: leased puts are sent in batches of up to this many ... (each batch is one registry call,
#: one journal commit and Ray tasks sized to it: 256 where 64 cost the registry 0.08-0.09 ms
#: a put where 0.12-0.16)
BATCH = 1024
#: ... or once no put came for this many seconds (the loop paused or ended) ...
SEND_DELAY = 0.002
#: ... or this many seconds after the oldest of them, whichever comes first. A loop that
#: keeps putting sends about 350 puts a call, and the registry spends 0.051-0.077 ms a put
#: where 20 ms and batches of 256 (235 a call) cost 0.071-0.096 (8 pairs of alternating
#: runs); sending what came within the sender thread's turn (94 a call) cost more still.
#: The price: a tight loop's tasks start up to 50 ms later.
MAX_SEND_DELAY = 0.05
#: with this many puts unanswered, a put waits for the oldest answers
MAX_UNANSWERED = 4096


def send_at(oldest: float, newest: float) -> float:
    """When buffered puts go, the oldest and newest of them made at these times."""
    return min(newest + SEND_DELAY, oldest + MAX_SEND_DELAY)


class _LocalLease:
    """One queue's lease, as this process sees it."""

    def __init__(self) -> None:
        self.slots = 0
        self.usable_until = 0.0
        self.last_put = -LEASE_SECONDS
        self.want = 0
        self.session = ""


class Pipeline:
    """`.put()` in a loop without a round trip per call.

    A put that finds no lease waits for the registry, as a lone put always does; if it came
    soon after another put, it also asks for a lease (4 slots, then 16, 64, 256, 1024,
    4096). Puts within the lease cannot meet a full queue, so they return at once, and are
    sent in batches a moment later. Ray runs one caller's calls to an actor in order, and every other
    registry call from this process (`Task.status()`, `wait`, ...) first sends and waits for
    the unanswered puts, so nothing about a task is read before it is stored; a process that
    exits does the same. An unanswered put whose answer is an error raises it from the next
    put or registry call.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.ready = threading.Condition(self.lock)
        self.client = uuid.uuid4().hex
        self.queues: dict[str, _LocalLease] = {}
        #: puts waiting to be sent, by queue, and when the oldest and newest of them were made
        self.buffer: dict[str, list[dict[str, Any]]] = {}
        self.oldest = self.newest = 0.0
        self.unanswered: list[tuple[Any, str, list[dict[str, Any]]]] = []
        self.sender: threading.Thread | None = None

    def submit(self, queue: str, items: list[dict[str, Any]]) -> list[str]:
        """Store tasks on `queue`; returns their ids (see the class docstring for when)."""
        ids = [item["id"] for item in items]
        with self.lock:
            session = _session()
            put = self.queues.setdefault(queue, _LocalLease())
            now = time.monotonic()
            recent, put.last_put = now - put.last_put < LEASE_SECONDS / 2, now
            if put.session == session and put.slots >= len(items) and now < put.usable_until:
                put.slots -= len(items)
                put.usable_until = now + LEASE_SECONDS / 2
                self._buffer(queue, items, now)
                return ids
            self._answers(wait=False)
            self._send()  # before this put: Ray keeps one caller's order
            put.want = min(MAX_LEASE, max(4, put.want * 4)) if recent else 0
            put.slots, put.session = 0, session
            handle = registry()
            submitted = handle.submit.remote(queue, items, self.client)
            leased = handle.lease.remote(queue, self.client, put.want) if put.want else None
            if not self._stored(submitted, queue, items):
                return ids
            if leased is not None:
                try:
                    put.slots = ray.get(leased)
                except Exception:  # the put is stored; the next one goes without a lease
                    log.warning("no lease on queue %s this time", queue, exc_info=True)
                put.usable_until = time.monotonic() + LEASE_SECONDS / 2
            return ids

    def collect(self) -> None:
        """Send every buffered put and wait for every answer."""
        with self.lock:
            if self.buffer or self.unanswered:
                self._send()
                self._answers(wait=True)

    def _buffer(self, queue: str, items: list[dict[str, Any]], now: float) -> None:
        first = not self.buffer
        if first:
            self.oldest = now
        self.newest = now
        waiting = self.buffer.setdefault(queue, [])
        waiting.extend(items)
        if len(waiting) >= BATCH:
            self._send()
            if sum(len(items) for _, _, items in self.unanswered) > MAX_UNANSWERED:
                self._answers(wait=True)
        elif self.sender is None:
            self.sender = threading.Thread(target=self._send_soon, name="raybeam-put", daemon=True)
            self.sender.start()
            # after Ray's own exit handler (registered at import), so this one runs first
            atexit.register(self._collect_at_exit)
        elif first:  # else the sender is already waiting for the batch's time to come
            self.ready.notify()

    def _send(self) -> None:
        if not self.buffer:
            return
        if not ray.is_initialized():  # Ray was shut down under unsent puts
            lost = [item["id"] for items in self.buffer.values() for item in items]
            self.buffer = {}
            log.error("Ray was shut down before these tasks were sent: %s", ", ".join(lost))
            return
        handle = registry()  # if this fails, the puts stay buffered for the next try
        while self.buffer:
            queue, items = next(iter(self.buffer.items()))
            ref = handle.submit.remote(queue, items, self.client)
            del self.buffer[queue]
            self.unanswered.append((ref, queue, items))

    def _send_soon(self) -> None:
        with self.lock:
            while True:
                if not self.buffer:
                    self.ready.wait()
                    continue
                due = send_at(self.oldest, self.newest) - time.monotonic()
                if due > 0:
                    self.ready.wait(due)
                    continue
                try:
                    self._send()
                except Exception:  # kept; sent by the next try, put or registry call
                    log.exception("could not send puts to the registry; trying again")
                    self.ready.wait(0.5)

    def _answers(self, wait: bool) -> None:
        """Take in the answers that came (all of them, with `wait`); resend what was lost."""
        if not self.unanswered:
            return
        refs = [ref for ref, _, _ in self.unanswered]
        if wait:
            done = set(refs)
        else:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            done = set(ready)
        answered = [entry for entry in self.unanswered if entry[0] in done]
        self.unanswered = [entry for entry in self.unanswered if entry[0] not in done]
        failed: list[Exception] = []
        for ref, queue, items in answered:
            try:
                self._stored(ref, queue, items)
            except Exception as exc:
                _note(
                    exc,
                    "raised for tasks put earlier, without waiting: "
                    + ", ".join(item["id"] for item in items),
                )
                failed.append(exc)
        if failed:
            raise failed[0]

    @staticmethod
    def _stored(ref: Any, queue: str, items: list[dict[str, Any]]) -> bool:
        """Wait for the answer to a `submit` sent here; one that the registry lost on its way
        goes again through `call` (stored ids are skipped). False when it had to go again."""
        try:
            ray.get(ref)
            return True
        except ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None
        except _GONE:
            call("submit", queue, items)
            return False

    def _collect_at_exit(self) -> None:
        if not ray.is_initialized():
            return
        try:
            self.collect()
        except Exception:
            log.exception("tasks put before exit were not stored")


def _note(exc: Exception, note: str) -> None:
    """`exc.add_note(note)`, which Python 3.10 lacks: there the note joins the message."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    elif exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{note}", *exc.args[1:])


pipeline = Pipeline()
# puts a handler made are stored before its attempt ends (a max_calls worker exits right after)
at_attempt_end(pipeline.collect)
