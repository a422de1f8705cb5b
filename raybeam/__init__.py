"""raybeam: a self-hosted serverless task queue on your own Ray cluster.

>>> from raybeam import task_queue
>>> @task_queue(cpu=1)
... def double(x: int) -> int:
...     return x * 2
>>> double.put(x=21).result(timeout=60)  # doctest: +SKIP
42
"""

from raybeam.config import configure, settings
from raybeam.containers import QueueDepthAutoscaler
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
from raybeam.outputs import Output, OutputFile
from raybeam.queue import TaskQueue, task_queue
from raybeam.record import TaskStatus
from raybeam.task import Task, get_task, list_tasks, wait
from raybeam.webhooks import InvalidCallbackUrl, InvalidWebhookSignature, verify_webhook

__all__ = [
    # defining and enqueueing
    "task_queue",
    "TaskQueue",
    "QueueDepthAutoscaler",
    "Image",
    "TaskContext",
    "Output",
    "OutputFile",
    # reading tasks
    "Task",
    "TaskStatus",
    "get_task",
    "list_tasks",
    "wait",
    # configuration and webhooks
    "configure",
    "settings",
    "verify_webhook",
    # errors
    "RaybeamError",
    "TaskFailed",
    "TaskCancelled",
    "TaskTimeout",
    "TaskExpired",
    "QueueFull",
    "QueueNotFound",
    "TaskNotFound",
    "InvalidOutputPath",
    "InvalidArguments",
    "InvalidConfiguration",
    "InvalidCallbackUrl",
    "InvalidWebhookSignature",
    "OutsideTask",
]
