"""Archiving: final records move from memory to Parquet files once they are old enough."""

from __future__ import annotations

import asyncio
import logging

from raybeam.middleware import Middleware

log = logging.getLogger("raybeam.archive")

#: SPEC §11: a record moves within this many seconds of being due
LATEST = 30.0
#: merges of small archive files after each sweep, at most (each reads 8 files, writes one)
MERGES = 4


class Archiving(Middleware):
    def on_boot(self) -> None:
        self.host.spawn(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        after = self.host.archive_after
        interval = min(LATEST / 3, max(0.2, after / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                while await self.host.archive_ended(after):
                    pass  # a backlog goes out file by file
                for _ in range(MERGES):  # small files merge, a few a sweep, so that
                    if not await self.host.merge_archive():  # archiving keeps its pace
                        break
            except Exception:
                log.exception("archiving failed; trying again in %.0f s", interval)
