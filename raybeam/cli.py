"""The `raybeam` command (SPEC §7): serve an app file, enqueue, read and cancel tasks, status.

    raybeam serve app.py [--host 127.0.0.1] [--port 8000] [--detach] [--insecure-no-auth]
    raybeam put QUEUE [--args '[...]'] [--kwargs '{...}'] [--callback-url URL]
    raybeam task list [--queue Q] [--status S] [--limit N] [--json]
    raybeam task get ID
    raybeam task cancel ID [ID ...]
    raybeam task retry ID [ID ...]
    raybeam status [--json]
    raybeam keys webhook

Every command works on the Ray cluster of `RAY_ADDRESS`, or a local one when it is unset;
`keys webhook` reads the storage (and, with `RAY_ADDRESS` set, the keys published there).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, TextIO

import ray

from raybeam import connection
from raybeam.config import settings
from raybeam.enqueue import enqueue
from raybeam.errors import RaybeamError
from raybeam.queue import TaskQueue
from raybeam.record import TaskStatus
from raybeam.storage import storage_from_settings
from raybeam.task import get_task, retry_tasks


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    ns = parser.parse_args(argv)
    if not hasattr(ns, "run"):
        parser.print_help()
        return 2
    out = sys.stdout
    connected = ray.is_initialized()
    try:
        # stdout carries only the answer: Ray's worker logs and autoscaler events go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            try:
                code: int = ns.run(ns, out)
            finally:
                if not connected and ray.is_initialized():
                    ray.shutdown()
        return code
    except RaybeamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _json_arg(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(
                f"expected a JSON {'array' if kind is list else 'object'}"
            )
        return value

    return parse


def _status_arg(text: str) -> str:
    try:
        return str(TaskStatus.parse(text).value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raybeam", description="A task queue on your Ray cluster."
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="register the queues of an app file and serve the HTTP API"
    )
    serve.add_argument("app", help="a Python file that defines queues with @task_queue")
    serve.add_argument("--host", help="address to bind [RAYBEAM_HTTP_HOST or 127.0.0.1]")
    serve.add_argument("--port", type=_positive, help="port [RAYBEAM_HTTP_PORT or 8000]")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback --host with no RAYBEAM_AUTH_TOKENS (anyone who reaches "
        "it can enqueue and read tasks)",
    )
    serve.add_argument(
        "--detach",
        action="store_true",
        help="deploy and return at once (the Ray cluster must outlive this command: RAY_ADDRESS or `ray start`)",
    )
    serve.set_defaults(run=_serve)

    put = sub.add_parser("put", help="enqueue a task on a registered queue")
    put.add_argument("queue")
    put.add_argument(
        "--args", type=_json_arg(list), default=[], help="positional arguments, a JSON array"
    )
    put.add_argument(
        "--kwargs", type=_json_arg(dict), default={}, help="keyword arguments, a JSON object"
    )
    put.add_argument("--callback-url", help="webhook for this task, overriding the queue's")
    put.set_defaults(run=_put)

    task = sub.add_parser("task", help="list, show, cancel or requeue tasks")
    task_sub = task.add_subparsers(title="task commands", metavar="ACTION", required=True)
    ls = task_sub.add_parser("list", help="tasks, newest first")
    ls.add_argument("--queue")
    ls.add_argument("--status", type=_status_arg)
    ls.add_argument("--limit", type=_positive, default=20)
    ls.add_argument("--json", action="store_true", help="print the records as JSON")
    ls.set_defaults(run=_task_list)
    get = task_sub.add_parser("get", help="one task's record, as JSON")
    get.add_argument("task_id")
    get.set_defaults(run=_task_get)
    cancel = task_sub.add_parser("cancel", help="cancel tasks that are not final")
    cancel.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    cancel.set_defaults(run=_task_cancel)
    retry = task_sub.add_parser("retry", help="requeue final tasks as new ones")
    retry.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    retry.set_defaults(run=_task_retry)

    status = sub.add_parser("status", help="queues, their depths and workers")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_status)

    keys = sub.add_parser("keys", help="print a key that others need")
    keys_sub = keys.add_subparsers(title="keys", metavar="KEY", required=True)
    webhook = keys_sub.add_parser(
        "webhook",
        help="the key webhooks are signed with, for receivers' raybeam.verify_webhook",
    )
    webhook.set_defaults(run=_keys_webhook)
    return parser


# ---- serve ------------------------------------------------------------------------------


def load_app(path: str) -> ModuleType:
    """Import a Python file as a module, with its folder on sys.path for its own imports."""
    file = Path(path).resolve()
    if not file.is_file():
        raise RaybeamError(f"no such file: {path}")
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(file.stem, file)
    if spec is None or spec.loader is None:
        raise RaybeamError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[file.stem] = module
    spec.loader.exec_module(module)
    return module


def find_queues(module: ModuleType) -> list[TaskQueue[Any, Any]]:
    seen: dict[str, TaskQueue[Any, Any]] = {}
    for value in vars(module).values():
        if isinstance(value, TaskQueue):
            seen.setdefault(value.name, value)
    return list(seen.values())


def _serve(ns: argparse.Namespace, out: TextIO) -> int:
    from serve_app.deployment import check_bind, deploy, undeploy

    check_bind(settings(), ns.host or settings().http_host, ns.insecure_no_auth)

    queues = find_queues(load_app(ns.app))
    if not queues:
        raise RaybeamError(f"{ns.app} defines no @task_queue; nothing to serve")
    connection.ensure_ray()
    for queue in queues:
        queue.register()
    if not settings().auth_tokens:
        print(
            "warning: RAYBEAM_AUTH_TOKENS is not set; the HTTP API takes requests without a token"
        )
    url = deploy(ns.host, ns.port, insecure_no_auth=ns.insecure_no_auth)
    names = ", ".join(q.name for q in queues)
    print(f"raybeam HTTP API at {url} (queues: {names})", file=out, flush=True)
    print(f"dashboard at {url}/dashboard", file=out, flush=True)
    if ns.detach:
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("Press Ctrl-C to stop.", file=out, flush=True)
    while not stop.wait(1.0):
        pass
    print("Shutting down the HTTP API...", file=out, flush=True)
    undeploy()
    return 0


# ---- tasks ------------------------------------------------------------------------------


def _put(ns: argparse.Namespace, out: TextIO) -> int:
    overrides = {"callback_url": ns.callback_url} if ns.callback_url else {}
    print(enqueue(ns.queue, ns.args, ns.kwargs, overrides), file=out)
    return 0


def _task_list(ns: argparse.Namespace, out: TextIO) -> int:
    records, _ = connection.call("list", ns.queue, ns.status, ns.limit, None)
    if ns.json:
        print(json.dumps(records, indent=2), file=out)
        return 0
    rows = [
        [r["id"], r["queue"], r["status"], r["created_at"] or "", str(r["attempts"])]
        for r in records
    ]
    print(table(["ID", "QUEUE", "STATUS", "CREATED", "ATTEMPTS"], rows), file=out)
    return 0


def _task_get(ns: argparse.Namespace, out: TextIO) -> int:
    print(json.dumps(get_task(ns.task_id).info(), indent=2), file=out)
    return 0


def _task_cancel(ns: argparse.Namespace, out: TextIO) -> int:
    tasks = [get_task(task_id) for task_id in ns.task_ids]  # unknown ids fail before any cancel
    cancelled: list[str] = connection.call("cancel", [t.id for t in tasks])
    for task in tasks:
        print(f"{task.id} {'cancelled' if task.id in cancelled else 'already final'}", file=out)
    return 0


def _task_retry(ns: argparse.Namespace, out: TextIO) -> int:
    for task, old in zip(retry_tasks(ns.task_ids), ns.task_ids, strict=True):
        print(f"{old} requeued as {task.id}", file=out)
    return 0


def _status(ns: argparse.Namespace, out: TextIO) -> int:
    stats: dict[str, dict[str, Any]] = connection.call("queue_stats")
    if ns.json:
        print(json.dumps(stats, indent=2), file=out)
        return 0
    rows = []
    for name, s in sorted(stats.items()):
        by_status = " ".join(f"{k}={v}" for k, v in sorted(s["by_status"].items()))
        rows.append([name, str(s["queue_depth"]), str(s["active_containers"]), by_status])
    print(table(["QUEUE", "DEPTH", "WORKERS", "TASKS"], rows), file=out)
    return 0


def _keys_webhook(ns: argparse.Namespace, out: TextIO) -> int:
    if settings().ray_address:  # a deployer may have published a configured key there
        connection.ensure_ray()
    print(storage_from_settings().webhook_key().decode(), file=out)
    return 0


def table(header: list[str], rows: list[list[str]]) -> str:
    """Rows as left-aligned columns under a header."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
