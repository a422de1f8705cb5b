"""The dashboard (SPEC §9) in a real browser: headless Chromium (Debian's `chromium`, driven
by Playwright) against the HTTP app on the session's Ray, served by uvicorn on loopback.

Signs in, watches a queue's counts change as its tasks run, pages the task list, opens a
task and checks its image output is drawn, cancels a running task and retries a failed one
from the page. Leaves one screenshot per page in docs/screenshots/.
"""

from __future__ import annotations

import contextlib
import http.server
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

import raybeam
from raybeam import Output, TaskContext, task_queue
from tests.support.net import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():  # scripts/setup installs it: a missing one fails, loudly
    pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium", pytrace=False)

TOKEN = "dashboard-test-token"
SUFFIX = uuid.uuid4().hex[:6]
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDTH, HEIGHT = 64, 40


@task_queue(name=f"dash_work_{SUFFIX}", cpu=0.25, retries=0)
def work(seconds: float = 1.0, gate: str | None = None) -> dict[str, float]:
    # a gate holds the task running until the test opens it (the page polls every 2 s)
    deadline = time.monotonic() + 60
    while gate is not None and not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(seconds)
    return {"slept": seconds}


@task_queue(name=f"dash_picture_{SUFFIX}", cpu=0.25, retries=0)
def picture(context: TaskContext) -> dict[str, int]:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), "#2f6fdf")
    ImageDraw.Draw(image).ellipse((8, 4, 56, 36), fill="#ffd166")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    context.progress({"step": "drawn", "done": 1})
    Output.from_bytes("chart.png", buffer.getvalue()).save()
    Output.from_bytes("numbers.csv", b"a,b\n1,2\n").save()
    return {"width": WIDTH, "height": HEIGHT}


@task_queue(name=f"dash_broken_{SUFFIX}", cpu=0.25, retries=0)
def broken(x: int = 1) -> int:
    raise ValueError(f"the input {x} was odd")


@task_queue(name=f"dash_idle_{SUFFIX}", cpu=0.25)
def idle() -> None:
    """Registered, never called: the dashboard lists it all the same."""


@dataclass
class Site:
    url: str
    browser: Any
    page: Any
    #: (method, path, status) of every answer the app gave
    answers: list[tuple[str, str, int]]
    #: a page on another port of this host
    elsewhere: str


class Recorder:
    """ASGI middleware that notes each answer's status."""

    def __init__(self, app: Any, answers: list[tuple[str, str, int]]) -> None:
        self.app = app
        self.answers = answers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.answers.append((scope["method"], scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, noting if scope["type"] == "http" else send)


@contextlib.contextmanager
def elsewhere() -> Iterator[str]:
    """Another site's page, on another loopback port: same-site, not same-origin."""
    page = b"<!doctype html><title>elsewhere</title><p>another site"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def build_app() -> Any:
    """The real app on the session's registry, with the dashboard as `create_app` wires it
    at merge (done here while it does not; see serve_app/dashboard/__init__.py)."""
    from serve_app import dashboard, guard
    from serve_app.app import create_app

    app = create_app(tokens=[TOKEN])
    paths = {getattr(route, "path", None) for route in app.routes}
    if "/dashboard" not in paths:
        app.add_middleware(dashboard.CookieAuth)
        app.include_router(dashboard.dashboard_router(poll_seconds=1.0))
        pages = r"^/dashboard(/task/[^/]+|/static/[A-Za-z0-9_.-]+|/login|/logout)?$"
        guard.PUBLIC = re.compile(f"(?:{guard.PUBLIC.pattern})|{pages}")
    return app


@pytest.fixture(scope="module")
def site(ray_cluster: Any) -> Iterator[Site]:
    import uvicorn

    from serve_app import guard

    public = guard.PUBLIC
    for queue in (work, picture, broken, idle):
        queue.register()
    port = free_port()
    answers: list[tuple[str, str, int]] = []
    server = uvicorn.Server(
        uvicorn.Config(
            Recorder(build_app(), answers),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as playwright, elsewhere() as other:
            # Debian's Chromium, never a downloaded one; Playwright gives it a fresh profile
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            context.set_default_timeout(30_000)
            page = context.new_page()
            yield Site(f"http://127.0.0.1:{port}", browser, page, answers, other)
            browser.close()
    finally:
        server.should_exit = True
        thread.join(15)
        guard.PUBLIC = public
        ids = [t.id for t in raybeam.list_tasks(queue=work.name) if not t.status().is_final]
        for task_id in ids:
            raybeam.get_task(task_id).cancel()


def sign_in(page: Any, url: str) -> None:
    """Open the dashboard, giving the token if it asks for one."""
    page.goto(f"{url}/dashboard")
    page.wait_for_selector("#content:not([hidden]), #login:not([hidden])")
    if page.is_visible("#login"):
        page.fill("#token", TOKEN)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#content:not([hidden])")


def cell(page: Any, queue: str, key: str) -> str:
    text: str = page.inner_text(f'#queues tr[data-queue="{queue}"] td[data-key="{key}"]')
    return text.strip()


def wait_cell(page: Any, queue: str, key: str, want: str, timeout: float = 60) -> None:
    selector = f'#queues tr[data-queue="{queue}"] td[data-key="{key}"]'
    page.wait_for_function(
        "([s, want]) => { const c = document.querySelector(s); return c && c.textContent.trim() === want; }",
        arg=[selector, want],
        timeout=timeout * 1000,
    )


def wait_status(task: raybeam.Task, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while task.status().value != wanted:
        assert time.monotonic() < deadline, f"task {task.id} is {task.status().value}"
        time.sleep(0.2)


def test_the_token_is_asked_once_and_kept_in_an_httponly_cookie(site: Site) -> None:
    context = site.browser.new_context(viewport={"width": 1280, "height": 640})
    page = context.new_page()
    try:
        page.goto(f"{site.url}/dashboard")
        page.wait_for_selector("#login:not([hidden])")
        assert page.get_attribute("#token", "type") == "password"
        page.screenshot(path=str(SHOTS / "login.png"))
        page.fill("#token", "not-the-token")
        page.click("#login-form button[type=submit]")
        page.wait_for_function(
            "() => document.querySelector('#login-error').textContent.length > 0"
        )
        assert context.cookies() == []
        page.fill("#token", TOKEN)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#content:not([hidden])")
        (cookie,) = context.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
            "raybeam_token",
            True,
            "Strict",
        )
        assert TOKEN not in page.url and cookie["value"] != TOKEN
        assert page.evaluate("document.cookie") == ""  # no script can read it
        page.reload()
        page.wait_for_selector("#content:not([hidden])")
        assert page.is_hidden("#login")
    finally:
        context.close()


def test_a_queues_counts_change_as_its_tasks_run(site: Site) -> None:
    page = site.page
    sign_in(page, site.url)
    page.wait_for_selector(f'#queues tr[data-queue="{idle.name}"]')  # listed with no task
    assert cell(page, idle.name, "depth") == "0"
    wait_cell(page, work.name, "COMPLETE", "0")
    gate = Path(tempfile.mkdtemp(prefix="rb-gate-")) / "open"
    tasks = [work.put(seconds=0.5, gate=str(gate)) for _ in range(3)]
    page.wait_for_function(
        "(s) => { const c = document.querySelector(s); return c && Number(c.textContent) > 0; }",
        arg=f'#queues tr[data-queue="{work.name}"] td[data-key="depth"]',
        timeout=30_000,
    )
    gate.touch()
    wait_cell(page, work.name, "COMPLETE", "3")
    wait_cell(page, work.name, "depth", "0")
    wait_cell(page, work.name, "per-minute", "3", timeout=15)
    raybeam.wait(tasks, timeout=30)

    # the task list: filtered by queue, paged by cursor
    page.goto(f"{site.url}/dashboard?queue={work.name}&limit=2")
    page.wait_for_selector("#tasks tbody tr[data-task]")
    newest = [t.id for t in tasks][::-1]
    assert rows(page) == newest[:2]
    page.click("#next")
    page.wait_for_function("() => document.querySelector('#page-label').textContent === 'page 2'")
    page.wait_for_function(
        "(id) => document.querySelector(`#tasks tr[data-task='${id}']`) !== null", arg=newest[2]
    )
    assert rows(page) == newest[2:]
    assert page.is_disabled("#next")
    page.click("#prev")
    page.wait_for_function(
        "(id) => document.querySelector(`#tasks tr[data-task='${id}']`) !== null", arg=newest[0]
    )
    page.select_option("#filter-status", "FAILED")
    page.wait_for_selector("#no-tasks:not([hidden])")
    assert "status=FAILED" in page.url and TOKEN not in page.url


def rows(page: Any) -> list[str]:
    found: list[str] = page.eval_on_selector_all(
        "#tasks tbody tr[data-task]", "rows => rows.map(r => r.dataset.task)"
    )
    return found


def test_a_tasks_image_output_is_drawn(site: Site) -> None:
    page = site.page
    task = picture.put()
    assert task.result(timeout=60) == {"width": WIDTH, "height": HEIGHT}
    sign_in(page, site.url)
    page.select_option("#filter-queue", picture.name)
    page.click(f'#tasks tr[data-task="{task.id}"] a')
    page.wait_for_url(f"**/dashboard/task/{task.id}")
    image = page.wait_for_selector('img[data-output="chart.png"]')
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image)
    size = page.evaluate("(img) => [img.naturalWidth, img.naturalHeight]", image)
    assert size == [WIDTH, HEIGHT]
    assert page.inner_text("#status") == "COMPLETE"
    link = page.eval_on_selector('a[data-output="numbers.csv"]', "a => a.href")
    assert link.startswith(f"{site.url}/output/id/")  # on the origin that served the page
    download = page.request.get(link)
    assert download.status == 200 and download.body() == b"a,b\n1,2\n"
    assert '"done":1' in page.inner_text("#progress")
    assert page.inner_text('#attempts tr[data-attempt="1"] .badge') == "COMPLETE"
    page.screenshot(path=str(SHOTS / "task.png"), full_page=True)


def test_cancel_a_running_task_from_its_page(site: Site) -> None:
    page = site.page
    task = work.put(seconds=90.0)
    wait_status(task, "RUNNING")
    sign_in(page, site.url)
    page.goto(f"{site.url}/dashboard/task/{task.id}")
    page.wait_for_function("() => document.querySelector('#status').textContent === 'RUNNING'")
    asked: list[str] = []

    def accept(dialog: Any) -> None:
        asked.append(dialog.type)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#cancel")
    page.wait_for_function("() => document.querySelector('#status').textContent === 'CANCELLED'")
    assert asked == ["confirm"]
    assert task.status().value == "CANCELLED"
    assert page.is_disabled("#cancel") and page.is_enabled("#retry")


def test_retry_a_failed_task_from_its_page(site: Site) -> None:
    page = site.page
    task = broken.put(x=3)
    wait_status(task, "FAILED")
    sign_in(page, site.url)
    page.goto(f"{site.url}/dashboard/task/{task.id}")
    page.wait_for_selector("#failure-box:not([hidden])")
    trace = page.inner_text("#failure")
    assert "Traceback" in trace and "ValueError: the input 3 was odd" in trace
    assert "\n" in trace  # the traceback keeps its lines
    page.screenshot(path=str(SHOTS / "task-failed.png"), full_page=True)

    # A page on another port of this host is "same-site": the browser sends the Strict
    # cookie along, and the origin check is what refuses the request.
    page.goto(site.elsewhere)
    page.evaluate(
        """([url, id]) => fetch(url, {method: "POST", mode: "no-cors", credentials: "include",
            headers: {"Content-Type": "text/plain"}, body: JSON.stringify({task_ids: [id]})})""",
        [f"{site.url}/v2/task/retry/", task.id],
    )
    assert ("POST", "/v2/task/retry/", 403) in site.answers
    assert task.info()["retried_as"] is None
    page.goto(f"{site.url}/dashboard/task/{task.id}")
    page.wait_for_selector("#failure-box:not([hidden])")
    page.click("#retry")
    page.wait_for_selector("#retry-link, #problem:not([hidden])")
    assert page.is_hidden("#problem"), page.inner_text("#problem")
    link = page.wait_for_selector("#retry-link")
    new_id = link.inner_text().strip()
    assert new_id != task.id
    again = raybeam.get_task(new_id)
    assert again.info()["retry_of"] == task.id
    wait_status(again, "FAILED")
    page.wait_for_selector("#retried-as")
    assert task.info()["retried_as"] == new_id
    link.click()
    page.wait_for_url(f"**/dashboard/task/{new_id}")
    page.wait_for_function("() => document.querySelector('#status').textContent === 'FAILED'")

    # the queues page once every test's tasks have run: the README's picture of it
    page.goto(f"{site.url}/dashboard")
    wait_cell(page, broken.name, "FAILED", "2")
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)
