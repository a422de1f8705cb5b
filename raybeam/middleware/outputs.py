"""Output links on the task record, signed afresh on every read."""

from __future__ import annotations

from typing import Any

from raybeam.middleware import Middleware
from raybeam.record import TaskRecord


class OutputLinks(Middleware):
    def public_outputs(self, rec: TaskRecord) -> list[dict[str, Any]]:
        storage = self.registry.storage
        expires = int(self.registry.output_url_expires)
        return [
            {
                "name": o["name"],
                "url": storage.signed_url(o["key"], o["id"], expires),
                "expires_in": expires,
            }
            for o in rec.outputs
        ]
