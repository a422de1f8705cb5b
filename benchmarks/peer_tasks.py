"""The no-op task as the peers' own worker processes import it (Celery, RQ).

`BENCH_REDIS_URL` names the Redis that the benchmark started; Celery is imported only when
`celery_app()` is called, so RQ workers do not need it.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any


def noop(x: int) -> int:
    return x


@cache
def celery_app() -> Any:
    from celery import Celery

    url = os.environ["BENCH_REDIS_URL"]
    app = Celery("bench", broker=url, backend=url)
    app.conf.update(
        task_default_queue="bench_celery",
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name="bench.noop")(noop)
    return app


if os.environ.get("BENCH_CELERY_WORKER"):
    # `celery -A benchmarks.peer_tasks:app worker` looks for this name
    app = celery_app()
