"""`@task_queue` and `TaskQueue`: put, map, options, and the plain local call."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import sys
import sysconfig
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar

import cloudpickle

from raybeam import connection
from raybeam.containers import QueueDepthAutoscaler
from raybeam.errors import InvalidArguments, InvalidConfiguration
from raybeam.image import Image
from raybeam.options import check_int, check_options, check_priority, split
from raybeam.policy import Retries, retry_settings
from raybeam.record import TaskSpec
from raybeam.resources import gpu_types, ray_options
from raybeam.runner import FunctionBundle
from raybeam.task import Task
from raybeam.wire import encode_payload

P = ParamSpec("P")
R = TypeVar("R")


def signature_params(fn: Callable[..., Any]) -> list[list[Any]]:
    """The handler's parameters as plain data, so callers can bind without its code."""
    params = []
    for p in inspect.signature(fn).parameters.values():
        if p.name == "context":
            continue
        params.append([p.name, int(p.kind), p.default is not inspect.Parameter.empty])
    return params


@functools.lru_cache(maxsize=256)
def _signature(params: str) -> inspect.Signature:
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect._ParameterKind(kind),
                default=None if has_default else inspect.Parameter.empty,
            )
            for name, kind, has_default in json.loads(params)
        ]
    )


def bind_arguments(params: list[list[Any]], args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Raise InvalidArguments unless args and kwargs bind to the handler's parameters."""
    sig = _signature(json.dumps(params))
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArguments(f"arguments do not match {sig}: {exc}") from None


@dataclasses.dataclass
class QueueConfig:
    name: str
    cpu: float = 1.0
    memory: int | float | str = 128
    gpu: str | list[str] | None = None
    gpu_count: float | None = None
    image: Image | None = None
    retries: int = 3
    backoff: list[float] | None = None
    priority: int = 0
    retry_for: tuple[type[BaseException], ...] | None = None
    timeout: int = 3600
    ttl: int = 7200
    callback_url: str | None = None
    keep_warm_seconds: int = 0
    on_start: Callable[[], Any] | None = None
    max_pending_tasks: int = 100
    workers: int = 1
    authorized: bool = True
    autoscaler: QueueDepthAutoscaler = dataclasses.field(default_factory=QueueDepthAutoscaler)
    max_calls: int | None = None

    @property
    def warm(self) -> bool:
        """Tasks run on warm workers (containers) rather than as plain Ray tasks."""
        return self.keep_warm_seconds > 0 or self.on_start is not None


class TaskQueue(Generic[P, R]):
    """A handler turned into a queue. Call it for a plain local call; `.put()` to enqueue."""

    def __init__(
        self,
        fn: Callable[P, R],
        config: QueueConfig,
        overrides: dict[str, Any] | None = None,
        _base: TaskQueue[P, R] | None = None,
    ) -> None:
        self.fn = fn
        self.config = config
        self.name = config.name
        self._overrides = overrides or {}
        self._base = _base
        self._wants_context = "context" in inspect.signature(fn).parameters
        self._params = signature_params(fn)
        self._registered: str | None = None
        self._definition: tuple[dict[str, Any], bytes] | None = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", config.name)
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the handler here and now: no queue, no Ray."""
        return self.fn(*args, **kwargs)

    def options(self, **overrides: Any) -> TaskQueue[P, R]:
        """This queue with per-call overrides of `callback_url`, `timeout`, `retries`, `ttl`,
        and task options `idempotency_key`, `priority`, `delay` (seconds), `run_at`.

        >>> handler.options(timeout=60).put(x=1)  # doctest: +SKIP
        """
        merged = {**self._overrides, **check_options(overrides)}
        return TaskQueue(self.fn, self.config, merged, _base=self._base or self)

    def definition(self) -> tuple[dict[str, Any], bytes]:
        """The queue as the registry stores it: settings and the pickled handler bundle."""
        if self._base is not None:
            return self._base.definition()
        if self._definition is None:
            c = self.config
            bundle = FunctionBundle(
                fn=self.fn,
                retry_for=c.retry_for,
                wants_context=self._wants_context,
                on_start=c.on_start,
            )
            with _by_value(self.fn):
                blob = cloudpickle.dumps(bundle)
            digest = hashlib.sha256(blob).hexdigest()[:32]
            spec = TaskSpec(
                function=digest,
                retries=c.retries,
                backoff=c.backoff,
                timeout=c.timeout,
                ttl=c.ttl,
                callback_url=c.callback_url,
                ray_options=ray_options(
                    cpu=c.cpu, memory=c.memory, gpu=c.gpu, gpu_count=c.gpu_count, image=c.image
                ),
                gpu_types=gpu_types(c.gpu) or (["any"] if c.gpu_count else []),
                max_calls=c.max_calls,
            )
            warm = None
            if c.warm:
                warm = {
                    "keep_warm_seconds": c.keep_warm_seconds,
                    "workers": c.workers,
                    "autoscaler": dataclasses.asdict(c.autoscaler),
                }
            self._definition = (
                {
                    "name": c.name,
                    "spec": dataclasses.asdict(spec),
                    "max_pending_tasks": c.max_pending_tasks,
                    "authorized": c.authorized,
                    "priority": c.priority,
                    "params": self._params,
                    "warm": warm,
                },
                blob,
            )
        return self._definition

    def register(self) -> None:
        """Make the queue known to the registry (done by the first `.put()`)."""
        base = self._base or self
        defn, blob = self.definition()
        session = connection._session()
        if base._registered != session:
            connection.call("register_queue", defn, blob)
            base._registered = session

    def _items(self, calls: Sequence[tuple[Sequence[Any], dict[str, Any]]]) -> list[dict[str, Any]]:
        overrides, options = split(self._overrides)
        if "idempotency_key" in options and len(calls) > 1:
            raise InvalidConfiguration("an idempotency_key names one call; use .put(), not .map()")
        items = []
        for args, kwargs in calls:
            bind_arguments(self._params, args, kwargs)
            item = {
                "id": str(uuid.uuid4()),
                "payload": encode_payload(tuple(args), dict(kwargs)),
                "overrides": overrides,
            }
            if options:
                item["options"] = options
            items.append(item)
        return items

    def _submit(self, items: list[dict[str, Any]]) -> list[Task]:
        self.register()
        if any("idempotency_key" in item.get("options", {}) for item in items):
            # the registry answers with the first task's id: wait for it
            return [Task(i) for i in connection.call("submit", self.name, items)]
        return [Task(i) for i in connection.pipeline.submit(self.name, items)]

    def put(self, *args: P.args, **kwargs: P.kwargs) -> Task:
        """Enqueue one call; returns its `Task` at once.

        >>> task = handler.put(x=10)  # doctest: +SKIP
        Enqueued task: 8d1c...
        """
        items = self._items([(args, kwargs)])
        (task,) = self._submit(items)
        print(f"Enqueued task: {task.id}")
        return task

    def map(self, calls: Sequence[dict[str, Any] | Sequence[Any] | Any]) -> list[Task]:
        """Enqueue many calls in one registry round trip: dicts are kwargs, lists/tuples args.

        >>> tasks = handler.map([{"x": 1}, {"x": 2}])  # doctest: +SKIP
        """
        normalised: list[tuple[Sequence[Any], dict[str, Any]]] = []
        for call in calls:
            if isinstance(call, dict):
                normalised.append(((), call))
            elif isinstance(call, (list, tuple)):
                normalised.append((call, {}))
            else:
                normalised.append(((call,), {}))
        tasks = self._submit(self._items(normalised))
        print(f"Enqueued {len(tasks)} tasks on {self.name}")
        return tasks

    def __repr__(self) -> str:
        return f"TaskQueue({self.name!r})"


class _by_value:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.registered: list[Any] = []

    def __enter__(self) -> None:
        self.registered = _register_by_value(self.fn)

    def __exit__(self, *exc: object) -> None:
        for mod in self.registered:
            cloudpickle.unregister_pickle_by_value(mod)


def _register_by_value(fn: Callable[..., Any]) -> list[Any]:
    """Register the handler's own (non-installed) modules to be pickled by value."""
    if fn.__module__ in ("__main__", None):
        return []
    paths = sysconfig.get_paths()
    registered = []
    for name in {fn.__module__.split(".")[0], fn.__module__}:
        mod = sys.modules.get(name)
        origin = getattr(mod, "__file__", None) or ""
        if mod is None or not origin or origin.startswith((paths["purelib"], paths["stdlib"])):
            continue
        if name.split(".")[0] in ("raybeam", "serve_app"):
            continue
        try:
            cloudpickle.register_pickle_by_value(mod)
            registered.append(mod)
        except ValueError:
            pass
    return registered


def task_queue(
    fn: Callable[P, R] | None = None,
    *,
    name: str | None = None,
    cpu: float = 1.0,
    memory: int | float | str = 128,
    gpu: str | list[str] | None = None,
    gpu_count: float | None = None,
    image: Image | None = None,
    retries: int | Retries = 3,
    priority: int = 0,
    retry_for: Sequence[type[BaseException]] | type[BaseException] | None = None,
    timeout: int = 3600,
    ttl: int = 7200,
    callback_url: str | None = None,
    keep_warm_seconds: int = 0,
    on_start: Callable[[], Any] | None = None,
    max_pending_tasks: int = 100,
    workers: int = 1,
    authorized: bool = True,
    autoscaler: QueueDepthAutoscaler | None = None,
    max_calls: int | None = None,
) -> Any:
    """Turn a function into a task queue.

    >>> @task_queue(cpu=1, memory="512Mi", retries=2)
    ... def handler(x: int) -> dict:
    ...     return {"result": x * 2}
    >>> task = handler.put(x=10)  # doctest: +SKIP
    """

    def wrap(f: Callable[P, R]) -> TaskQueue[P, R]:
        retry_tuple: tuple[type[BaseException], ...] | None
        if retry_for is None:
            retry_tuple = None
        elif isinstance(retry_for, type):
            retry_tuple = (retry_for,)
        else:
            retry_tuple = tuple(retry_for)
        for exc_type in retry_tuple or ():
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise InvalidConfiguration(f"retry_for takes exception classes, got {exc_type!r}")
        config = QueueConfig(
            name=name or f.__name__,
            cpu=cpu,
            memory=memory,
            gpu=gpu,
            gpu_count=gpu_count,
            image=image,
            **retry_settings(retries),
            priority=check_priority(priority),
            retry_for=retry_tuple,
            timeout=timeout if timeout == -1 else check_int("timeout", timeout, 1),
            ttl=check_int("ttl", ttl, 1),
            callback_url=check_options({"callback_url": callback_url})["callback_url"],
            keep_warm_seconds=check_int("keep_warm_seconds", keep_warm_seconds, 0),
            on_start=on_start,
            max_pending_tasks=check_int("max_pending_tasks", max_pending_tasks, 1),
            workers=check_int("workers", workers, 1),
            authorized=authorized,
            autoscaler=autoscaler or QueueDepthAutoscaler(),
            max_calls=None if max_calls is None else check_int("max_calls", max_calls, 0),
        )
        if on_start is not None and not callable(on_start):
            raise InvalidConfiguration(f"on_start must be a callable, got {on_start!r}")
        if not config.name.replace("-", "").replace("_", "").isalnum():
            raise InvalidConfiguration(
                f"queue name {config.name!r} must use only letters, digits, '-' and '_'"
            )
        ray_options(cpu=cpu, memory=memory, gpu=gpu, gpu_count=gpu_count, image=image)
        return TaskQueue(f, config)

    return wrap(fn) if fn is not None else wrap
