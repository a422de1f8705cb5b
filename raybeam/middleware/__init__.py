"""Cross-cutting behaviour of the registry, one module per concern.

A middleware hooks into the task lifecycle in the registry actor; every hook does nothing by
default, and a hook that raises is logged and never fails the task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raybeam.record import TaskRecord, TaskStatus


class Middleware:
    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def on_boot(self) -> None:
        """The registry has loaded its state and can run background work."""

    def on_transition(self, rec: TaskRecord, old: TaskStatus, new: TaskStatus) -> None:
        """`rec` just moved from `old` to `new` (not yet stored); keep this cheap."""

    def on_final(self, rec: TaskRecord) -> None:
        """`rec` reached a final status, and that is stored."""

    def public_outputs(self, rec: TaskRecord) -> list[dict[str, Any]]:
        """The task's outputs as the record shows them."""
        return []


def load(registry: Any) -> list[Middleware]:
    from raybeam.middleware.metrics import LatencyMetrics
    from raybeam.middleware.outputs import OutputLinks
    from raybeam.middleware.retention import Retention
    from raybeam.middleware.webhooks import Webhooks

    return [
        OutputLinks(registry),
        Webhooks(registry),
        LatencyMetrics(registry),
        Retention(registry),
    ]
