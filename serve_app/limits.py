"""What one HTTP replica takes on (SPEC §10): body sizes, how long a body may take to arrive,
how many event streams stay open, and how many requests Serve hands a replica at once.

The numbers come from the replica's environment when it reads them, so `deploy()` passes
the caller's on (see `deployment.replica_env`).
"""

from __future__ import annotations

import logging

from raybeam.config import positive_env

log = logging.getLogger("raybeam.http")

#: the largest enqueue body
MAX_ENQUEUE_BODY = 16 * 2**20
#: the largest body of every other route
MAX_BODY = 2**20
BODY_TIMEOUT_ENV = "RAYBEAM_BODY_TIMEOUT"
MAX_STREAMS_ENV = "RAYBEAM_MAX_STREAMS"
#: seconds a body may take to arrive in all, by default
BODY_TIMEOUT = 30.0
#: open event streams per replica, by default
MAX_STREAMS = 1000
#: requests a replica takes beside its streams (slow bodies, ordinary calls); past the
#: sum, Serve's proxy queues a request until one ends
OTHER_REQUESTS = 1000
#: seconds a client refused for being one stream too many is told to wait
STREAM_RETRY_AFTER = 5


def body_timeout() -> float:
    """`RAYBEAM_BODY_TIMEOUT` [30]: seconds a request body may take to arrive."""
    return positive_env(BODY_TIMEOUT_ENV, BODY_TIMEOUT)


def max_streams() -> int:
    """`RAYBEAM_MAX_STREAMS` [1000]: event streams one replica keeps open at once."""
    return int(positive_env(MAX_STREAMS_ENV, MAX_STREAMS))


def max_ongoing_requests() -> int:
    """Serve's `max_ongoing_requests`: every stream, and room for everything else beside."""
    return max_streams() + OTHER_REQUESTS


class StreamSlots:
    """The event streams open on this replica, at most `max_streams()` at once."""

    def __init__(self) -> None:
        self.open = 0

    def take(self) -> bool:
        if self.open >= max_streams():
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open = max(0, self.open - 1)
