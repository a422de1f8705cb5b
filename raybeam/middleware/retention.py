"""Retention: final tasks older than the configured age are forgotten, outputs included."""

from __future__ import annotations

import asyncio
import logging
import time

from raybeam.middleware import Middleware

log = logging.getLogger("raybeam.retention")


class Retention(Middleware):
    def on_boot(self) -> None:
        self.host.spawn(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        age = float(self.host.retention_seconds)
        interval = min(3600.0, max(1.0, age / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.purge(age)
            except Exception:
                log.exception("retention sweep failed; trying again in %.0f s", interval)

    async def purge(self, older_than_seconds: float) -> int:
        if not self.host.may_write():
            return 0  # fenced or lapsed: the lease's holder removes what is due
        cutoff = time.time() - older_than_seconds
        old = [
            r for r in self.host.records()
            if r.status.is_final and (r.ended_at or r.updated_at) < cutoff
        ]  # fmt: skip
        for rec in old:
            self.host.forget(rec)
        if old:
            await self.host.persist()
            folders = {f"outputs/{r.queue}/{r.id}" for r in old if r.outputs or r.result_key}
            await asyncio.to_thread(self.host.storage.remove_folders, folders)
        # archive files go whole, once their newest task is past the retention
        archive = await self.host.archived()
        forgotten = len(old)
        for file in archive.expired(cutoff):
            if not self.host.may_write():
                break
            if file not in archive.files:
                continue  # merged away while outputs were removed: its rows went with it
            forgotten += len(file)
            archive.drop(file)
            self.host.retire(file.paths)  # deleted a minute on: a read may be at it now
            await asyncio.to_thread(self.host.storage.remove_folders, archive.folders(file))
        return forgotten
