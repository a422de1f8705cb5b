"""Idempotency keys: the same key on the same queue returns the first task, for a while.

The registry keeps one entry per (queue, key): the task it named, a fingerprint of the call
(its arguments and options), and when the key expires (`RAYBEAM_IDEMPOTENCY_SECONDS`,
a day by default). Entries are stored in the journal like records, so a key outlives a
registry restart; expired ones are dropped as they are met and by a periodic sweep.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from raybeam.config import positive_env
from raybeam.errors import IdempotencyConflict

DEFAULT_SECONDS = 86400


def key_seconds() -> float:
    return positive_env("RAYBEAM_IDEMPOTENCY_SECONDS", DEFAULT_SECONDS)


def fingerprint(item: dict[str, Any]) -> str:
    """What makes two calls the same call: arguments, overrides and options but the key."""
    options = {k: v for k, v in (item.get("options") or {}).items() if k != "idempotency_key"}
    options.pop("delay", None)  # a retried request is the same call, sent a little later
    blob = json.dumps([item["payload"], item.get("overrides") or {}, options], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def entry_key(queue: str, key: str) -> str:
    return json.dumps([queue, key])


class IdempotencyKeys:
    def __init__(self, entries: dict[str, dict[str, Any]], seconds: float | None = None) -> None:
        #: entry_key -> {"task", "fp", "expires"}
        self.entries = entries
        self.seconds = key_seconds() if seconds is None else seconds

    def first(self, queue: str, key: str, fp: str, now: float) -> str | None:
        """The task id this key named, if it is live; IdempotencyConflict for another call."""
        entry = self.entries.get(entry_key(queue, key))
        if entry is None or entry["expires"] <= now:
            return None
        if entry["fp"] != fp:
            raise IdempotencyConflict(
                f"idempotency key {key!r} on queue {queue!r} was used for task "
                f"{entry['task']} with other arguments or options; use a new key for a new call"
            )
        task_id: str = entry["task"]
        return task_id

    def add(self, queue: str, key: str, fp: str, task_id: str, now: float) -> tuple[str, Any]:
        """Note the key for `task_id`; returns the (key, value) to stage in the journal."""
        name = entry_key(queue, key)
        entry = {"task": task_id, "fp": fp, "expires": now + self.seconds}
        self.entries[name] = entry
        return name, entry

    def expired(self, now: float | None = None) -> list[str]:
        """Drop expired entries; returns their names (to stage as deletions)."""
        now = time.time() if now is None else now
        gone = [name for name, e in self.entries.items() if e["expires"] <= now]
        for name in gone:
            del self.entries[name]
        return gone
