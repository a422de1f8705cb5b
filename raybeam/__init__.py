"""raybeam: a self-hosted serverless task queue on your own Ray cluster.

>>> from raybeam import task_queue
>>> @task_queue(cpu=1)
... def double(x: int) -> int:
...     return x * 2
>>> double.put(x=21).result(timeout=60)  # doctest: +SKIP
42
"""

from raybeam.config import configure, settings
from raybeam.context import TaskContext
from raybeam.errors import (
    InvalidArguments,
    InvalidConfiguration,
    InvalidOutputPath,
    OutsideTask,
    QueueFull,
    QueueNotFound,
    RaybeamError,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
)
from raybeam.image import Image
from raybeam.outputs import Output
from raybeam.queue import TaskQueue, task_queue
from raybeam.record import TaskStatus
from raybeam.task import Task, get_task, list_tasks, wait
from raybeam.webhooks import InvalidCallbackUrl, InvalidWebhookSignature, verify_webhook

__all__ = [
    "Image",
    "InvalidArguments",
    "InvalidCallbackUrl",
    "InvalidConfiguration",
    "InvalidOutputPath",
    "InvalidWebhookSignature",
    "Output",
    "OutsideTask",
    "QueueFull",
    "QueueNotFound",
    # errors
    "RaybeamError",
    # reading tasks
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskExpired",
    "TaskFailed",
    "TaskNotFound",
    "TaskQueue",
    "TaskStatus",
    "TaskTimeout",
    # configuration and webhooks
    "configure",
    "get_task",
    "list_tasks",
    "settings",
    # defining and enqueueing
    "task_queue",
    "verify_webhook",
    "wait",
]
