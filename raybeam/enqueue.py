"""Enqueueing by queue name, for callers that do not hold the handler: HTTP and the CLI.

They build the same registry item that `TaskQueue.put()` builds (arguments checked against
the handler's signature, overrides validated, payload encoded) and send it through the same
`registry.submit` call, so there is one enqueue path for every caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from raybeam import connection
from raybeam.errors import QueueNotFound
from raybeam.options import check_options, split
from raybeam.queue import bind_arguments
from raybeam.wire import encode_payload


def new_item(
    definition: dict[str, Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `registry.submit` item for one call of the queue that `definition` describes.

    Raises InvalidArguments when the arguments do not bind to the handler's signature, and
    InvalidConfiguration (or InvalidCallbackUrl) for a bad override.

    >>> new_item(connection.call("queue_info", "handler"), [], {"x": 1})  # doctest: +SKIP
    {'id': '...', 'payload': '...', 'overrides': {}}
    """
    bind_arguments(definition["params"], args, kwargs)
    spec, options = split(check_options(overrides or {}))
    item: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "payload": encode_payload(tuple(args), dict(kwargs)),
        "overrides": spec,
    }
    if options:
        item["options"] = options
    return item


def enqueue(
    queue: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Enqueue one call on a registered queue by its name; returns the task id.

    >>> enqueue("handler", kwargs={"x": 10})  # doctest: +SKIP
    '8d1c...'
    """
    definition: dict[str, Any] | None = connection.call("queue_info", queue)
    if definition is None:
        raise QueueNotFound(
            f"no queue named {queue!r} is registered; register it first "
            "(`raybeam serve app.py`, or `.register()` / `.put()` from Python)"
        )
    item = new_item(definition, args, kwargs or {}, overrides)
    ids: list[str] = connection.call("submit", queue, [item])
    return ids[0]
