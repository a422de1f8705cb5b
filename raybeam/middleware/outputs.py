"""Output links on the task record, signed afresh on every read."""

from __future__ import annotations

import logging
from typing import Any

from raybeam.middleware import Middleware
from raybeam.record import TaskRecord

log = logging.getLogger("raybeam.outputs")


class OutputLinks(Middleware):
    def public_outputs(self, rec: TaskRecord) -> list[dict[str, Any]]:
        expires = int(self.host.output_url_expires)
        return [
            {"name": o["name"], "url": self._link(o, expires), "expires_in": expires}
            for o in rec.outputs
        ]

    def _link(self, output: dict[str, Any], expires: int) -> str | None:
        # One link that cannot be signed must not make the whole record unreadable.
        try:
            url: str = self.host.storage.signed_url(output["key"], output["id"], expires)
            return url
        except Exception:
            log.exception("could not sign a link to output %s", output.get("key"))
            return None
