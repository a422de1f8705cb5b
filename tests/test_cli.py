"""The `raybeam` command (SPEC §7), run as subprocesses against the session's Ray cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from raybeam.cli import main, table

SUFFIX = uuid.uuid4().hex[:6]
ECHO = f"cli_echo_{SUFFIX}"
STUCK = f"cli_stuck_{SUFFIX}"
SERVED = f"cli_served_{SUFFIX}"

APP = f"""
from raybeam import task_queue

@task_queue(name="{ECHO}", cpu=0.25, retries=0)
def echo(x: int, y: int = 0) -> dict:
    return {{"sum": x + y}}

@task_queue(name="{STUCK}", cpu=64)  # no node has 64 CPUs: its tasks stay PENDING
def stuck() -> None:
    pass
"""

SERVED_APP = f"""
from raybeam import task_queue

@task_queue(name="{SERVED}", cpu=0.25, retries=0)
def served(x: int) -> int:
    return x
"""


@pytest.fixture(scope="module")
def cli_env(ray_cluster: Any) -> dict[str, str]:
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address, PYTHONUNBUFFERED="1")
    env.pop("RAYBEAM_AUTH_TOKENS", None)
    return env


def raybeam(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "raybeam.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    if ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def in_process(capsys: Any, *args: str) -> tuple[int, str]:
    """`raybeam <args>` run here, on this process's Ray connection (a subprocess costs a
    second or more of imports): its exit code and what it wrote to stderr."""
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def wait_healthy(url: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never became healthy"
        time.sleep(0.25)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_serve_detached_then_foreground_until_sigterm(
    cli_env: dict[str, str], tmp_path: Path, serve_port: int
) -> None:
    app = tmp_path / "app.py"
    app.write_text(SERVED_APP)
    port = str(serve_port)  # the session's Serve, if an HTTP module started it already
    url = f"http://127.0.0.1:{port}"

    detached = raybeam(cli_env, "serve", str(app), "--port", port, "--detach")
    assert f"raybeam HTTP API at {url}" in detached.stdout
    assert SERVED in detached.stdout
    wait_healthy(url)
    enqueued = httpx.post(f"{url}/taskqueue/{SERVED}", json={"x": 1}, timeout=30)
    assert enqueued.status_code == 200, enqueued.text

    # in the foreground it redeploys on the same Serve, then stops cleanly on SIGTERM
    proc = subprocess.Popen(
        [sys.executable, "-m", "raybeam.cli", "serve", str(app), "--port", port],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any(f"raybeam HTTP API at {url}" in line for line in lines), "".join(lines)
        wait_healthy(url)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + rest
        assert "Shutting down" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Serve stops its proxy after `serve.shutdown()` returns; the port closes soon after
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=2)
        except httpx.TransportError:
            break
        assert time.monotonic() < deadline, "the HTTP API still answers after SIGTERM"
        time.sleep(0.25)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_put_task_and_status_commands(cli_env: dict[str, str], tmp_path: Path, capsys: Any) -> None:
    from raybeam.cli import find_queues, load_app

    app = tmp_path / "app_put.py"
    app.write_text(APP)
    for queue in find_queues(load_app(str(app))):
        queue.register()

    task_id = raybeam(cli_env, "put", ECHO, "--kwargs", '{"x": 2}', "--args", "[]").stdout.strip()
    uuid.UUID(task_id)
    stuck_id = raybeam(cli_env, "put", STUCK).stdout.strip()
    import raybeam as rb

    assert rb.Task(task_id).result(timeout=60) == {"sum": 2}

    record = json.loads(raybeam(cli_env, "task", "get", task_id).stdout)
    assert record["id"] == task_id
    assert record["status"] == "COMPLETE"
    assert record["result"] == {"sum": 2}

    listed = json.loads(raybeam(cli_env, "task", "list", "--queue", ECHO, "--json").stdout)
    assert [r["id"] for r in listed] == [task_id]

    cancelled = raybeam(cli_env, "task", "cancel", stuck_id).stdout
    assert f"{stuck_id} cancelled" in cancelled
    assert rb.Task(stuck_id).status() is rb.TaskStatus.CANCELLED

    rows = raybeam(cli_env, "task", "list", "--status", "cancelled").stdout.splitlines()
    assert rows[0].split() == ["ID", "QUEUE", "STATUS", "CREATED", "ATTEMPTS"]
    assert any(row.startswith(stuck_id) and "CANCELLED" in row for row in rows[1:])

    status = raybeam(cli_env, "status").stdout.splitlines()
    assert status[0].split() == ["QUEUE", "DEPTH", "WORKERS", "TASKS"]
    (echo_row,) = [row for row in status if row.startswith(ECHO + " ")]
    assert echo_row.split()[1:4] == ["0", "0", "COMPLETE=1"]

    # the errors, in this process (the command's own process is proven above)
    code, err = in_process(capsys, "put", "no_such_queue")
    assert code == 1 and "no queue named 'no_such_queue'" in err
    code, err = in_process(capsys, "put", ECHO, "--kwargs", '{"nope": 1}')
    assert code == 1 and "arguments do not match" in err
    code, err = in_process(capsys, "task", "get", "no-such-task")
    assert code == 1 and "no task with id" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "q", "--kwargs", "{bad"], "not JSON"),
        (["put", "q", "--kwargs", "[1]"], "expected a JSON object"),
        (["put", "q", "--args", '{"a": 1}'], "expected a JSON array"),
        (["task", "list", "--status", "SLEEPING"], "unknown task status"),
        (["task", "list", "--limit", "0"], "positive integer"),
        (["task"], "required"),
    ],
)
def test_bad_arguments_exit_2_before_touching_ray(
    argv: list[str], message: str, capsys: Any
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help(capsys: Any) -> None:
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out


def test_serve_a_file_without_queues_fails(tmp_path: Path, capsys: Any) -> None:
    app = tmp_path / "empty_app.py"
    app.write_text("x = 1\n")
    assert main(["serve", str(app)]) == 1
    assert "defines no @task_queue" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing.py")]) == 1


def test_table_aligns_columns() -> None:
    assert table(["A", "LONG"], [["xyz", "1"], ["q", "22"]]).splitlines() == [
        "A    LONG",
        "xyz  1",
        "q    22",
    ]


def test_main_is_the_console_script() -> None:
    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    assert 'raybeam = "raybeam.cli:main"' in text
    assert textwrap.dedent(main.__doc__ or "").strip()


def test_task_retry_requeues_final_tasks(
    cli_env: dict[str, str], tmp_path: Path, capsys: Any
) -> None:
    import raybeam as rb
    from raybeam.cli import find_queues, load_app

    app = tmp_path / "app_retry.py"
    app.write_text(APP)
    for queue in find_queues(load_app(str(app))):
        queue.register()
    done_id = raybeam(cli_env, "put", ECHO, "--kwargs", '{"x": 4}').stdout.strip()
    rb.Task(done_id).result(timeout=60)
    stuck_id = raybeam(cli_env, "put", STUCK).stdout.strip()

    out = raybeam(cli_env, "task", "retry", done_id).stdout
    assert out.startswith(f"{done_id} requeued as ")
    new_id = out.split()[-1]
    assert rb.Task(new_id).result(timeout=60) == {"sum": 4}
    assert rb.Task(new_id).info()["retry_of"] == done_id
    code, err = in_process(capsys, "task", "retry", stuck_id)
    assert code == 1 and "only a final task" in err
    rb.Task(stuck_id).cancel()
