"""Admission of new tasks: room on a queue, and the shared specs of new records."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from raybeam import codec
from raybeam.errors import QueueFull
from raybeam.record import TaskSpec

#: distinct (queue definition, overrides) pairs whose shared TaskSpec is kept
SPEC_CACHE = 1024


def check_room(
    queue: str, definition: dict[str, Any], depth: int, new: int, covered: int, free: int
) -> None:
    """`QueueFull` unless `new` tasks fit: `covered` of them in the caller's leased slots,
    the rest in the `free` ones."""
    if new - covered > free:
        cap = definition["max_pending_tasks"]
        raise QueueFull(
            f"queue {queue!r} holds {depth} unfinished tasks; its max_pending_tasks is {cap}, "
            f"so {new} more do not fit. Wait for tasks to finish or raise max_pending_tasks."
        )


class SpecCache:
    """Records of one queue definition with the same overrides share one (immutable) spec.

    Keyed by the whole definition, so a queue registered again with a new timeout, retries
    or resources (same code) gives its new tasks the new values; bounded, so distinct
    overrides (a `callback_url` per call) do not pile up.
    """

    def __init__(self, size: int = SPEC_CACHE) -> None:
        self.size = size
        self.specs: OrderedDict[tuple[str, str, str], TaskSpec] = OrderedDict()
        self.defined: tuple[Any, str] = (None, "")

    def __len__(self) -> int:
        return len(self.specs)

    def get(self, queue: str, definition: dict[str, Any], overrides: dict[str, Any]) -> TaskSpec:
        # a definition is replaced, never changed, when a queue is registered again: its
        # text is worked out once per definition object
        if self.defined[0] is not definition:
            self.defined = (definition, codec.canonical(definition["spec"]))
        key = (queue, self.defined[1], codec.canonical(overrides) if overrides else "")
        spec = self.specs.get(key)
        if spec is None:
            spec = self.specs[key] = TaskSpec(**{**definition["spec"], **overrides})
            if len(self.specs) > self.size:
                self.specs.popitem(last=False)
        else:
            self.specs.move_to_end(key)
        return spec
