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
    IdempotencyConflict,
    InvalidArguments,
    InvalidConfiguration,
    InvalidOutputPath,
    OutsideTask,
    QueueFull,
    QueueNotFound,
    RaybeamError,
    StorageInUse,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskNotFinal,
    TaskNotFound,
    TaskTimeout,
)
from raybeam.image import Image
from raybeam.outputs import Output, OutputFile
from raybeam.policy import Retries
from raybeam.queue import TaskQueue, task_queue
from raybeam.record import TaskStatus
from raybeam.task import Task, get_task, list_tasks, retry_tasks, wait
from raybeam.webhooks import InvalidCallbackUrl, InvalidWebhookSignature, verify_webhook

__all__ = [
    # defining and enqueueing
    "task_queue",
    "TaskQueue",
    "QueueDepthAutoscaler",
    "Image",
    "TaskContext",
    "Retries",
    "Output",
    "OutputFile",
    # reading tasks
    "Task",
    "TaskStatus",
    "get_task",
    "list_tasks",
    "retry_tasks",
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
    "IdempotencyConflict",
    "TaskNotFinal",
    "StorageInUse",
    "QueueNotFound",
    "TaskNotFound",
    "InvalidOutputPath",
    "InvalidArguments",
    "InvalidConfiguration",
    "InvalidCallbackUrl",
    "InvalidWebhookSignature",
    "OutsideTask",
]
