"""Room on a queue set aside for one client, so its next puts need not wait for an answer.

A client putting in a loop asks the registry for a lease of a few slots. While the lease
lasts, its puts are sent without waiting (they cannot meet a full queue: their room is
already counted), and `max_pending_tasks` still holds, because leased slots count against
it for everyone else. A lease ends LEASE_SECONDS after its last use, so a client that went
away gives its room back on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: seconds a lease outlives its last use; clients stop using one after half of that
LEASE_SECONDS = 1.0


class Leases:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: queue -> client -> [slots, expires at]
        self.held: dict[str, dict[str, list[float]]] = {}

    def _live(self, queue: str) -> dict[str, list[float]]:
        leases = self.held.get(queue)
        if not leases:
            return {}
        now = self.clock()
        for client in [c for c, (_, expires) in leases.items() if expires <= now]:
            del leases[client]
        return leases

    def total(self, queue: str) -> int:
        """Slots leased on `queue`, all clients together."""
        return int(sum(slots for slots, _ in self._live(queue).values()))

    def own(self, queue: str, client: str | None) -> int:
        if client is None:
            return 0
        entry = self._live(queue).get(client)
        return int(entry[0]) if entry else 0

    def use(self, queue: str, client: str, n: int) -> None:
        """`n` of the client's slots became tasks; the lease runs on from now."""
        entry = self._live(queue).get(client)
        if entry is not None:
            entry[0] -= n
            entry[1] = self.clock() + LEASE_SECONDS

    def grant(self, queue: str, client: str, want: int, free: int) -> int:
        """Lease up to `want` more slots out of `free` ones; returns the client's slots now.

        At most half the free room goes to one client, so others still find some.
        """
        self._live(queue)
        leases = self.held.setdefault(queue, {})
        entry = leases.setdefault(client, [0, 0.0])
        entry[0] += max(0, min(want, free // 2))
        entry[1] = self.clock() + LEASE_SECONDS
        if not entry[0]:
            del leases[client]
        return int(entry[0])
