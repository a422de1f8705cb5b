"""Cross-cutting behaviour of the registry, one module per concern.

A middleware hooks into the task lifecycle in the registry; every hook does nothing by
default, and a hook that raises is logged and never fails the task. The registry sees them
only through these hooks (it names no concrete middleware); they see the registry as a
`Host`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raybeam.host import Host
    from raybeam.record import TaskRecord, TaskStatus
    from raybeam.wire import Outcome


class Middleware:
    def __init__(self, host: Host) -> None:
        self.host = host

    def on_boot(self) -> None:
        """The registry has loaded its state and can run background work."""

    def on_enqueued(self, rec: TaskRecord) -> None:
        """`rec` is stored and PENDING (new, or resumed after a restart)."""

    def on_started(self, rec: TaskRecord) -> None:
        """A worker reported that an attempt of `rec` is running."""

    def on_transition(self, rec: TaskRecord, old: TaskStatus, new: TaskStatus) -> None:
        """`rec` just moved from `old` to `new` (not yet stored); keep this cheap."""

    def retry_delay(self, rec: TaskRecord, outcome: Outcome) -> float | None:
        """Seconds until a failed attempt of `rec` is tried again; None: not by this hook.
        The task is retried when any hook says so, after the shortest delay given."""
        return None

    def on_final(self, rec: TaskRecord) -> None:
        """`rec` reached a final status, and that is stored."""

    def keeps(self, rec: TaskRecord) -> bool:
        """This final `rec` must stay in memory for now (its webhook is still on its way)."""
        return False

    def public_outputs(self, rec: TaskRecord) -> list[dict[str, Any]]:
        """The task's outputs as the record shows them."""
        return []

    def metrics(self) -> dict[str, Any]:
        """Plain data this middleware adds to the registry's `metrics()`."""
        return {}

    async def purge(self, older_than_seconds: float) -> int:
        """Forget final tasks older than this; how many were forgotten."""
        return 0


def default(host: Host) -> list[Middleware]:
    """The middleware every registry runs, in hook order."""
    from raybeam.middleware.age_limit import AgeLimit
    from raybeam.middleware.archiving import Archiving
    from raybeam.middleware.metrics import LatencyMetrics
    from raybeam.middleware.outputs import OutputLinks
    from raybeam.middleware.retention import Retention
    from raybeam.middleware.retries import Retries
    from raybeam.middleware.time_limit import TimeLimit
    from raybeam.middleware.webhooks import Webhooks

    return [
        AgeLimit(host),
        TimeLimit(host),
        Retries(host),
        OutputLinks(host),
        Webhooks(host),
        LatencyMetrics(host),
        Retention(host),
        Archiving(host),
    ]
