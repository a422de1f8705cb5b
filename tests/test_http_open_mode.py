"""Open mode (no token configured) on the real stack: the API is for this machine only.

A request for a Host that is not a loopback name or the public host (DNS rebinding), or sent
from a page of another Origin (a web page the user visits), gets 403 and changes nothing;
`deploy()` refuses to bind anything but loopback. All traffic stays on loopback: the Host
and Origin headers only name other places.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import raybeam
from raybeam import task_queue
from raybeam.errors import InvalidConfiguration
from tests.support.serving import remove_app

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

SUFFIX = uuid.uuid4().hex[:6]
PUBLIC = "raybeam.test"


@task_queue(name=f"open_stuck_{SUFFIX}", cpu=64, max_pending_tasks=20)  # never starts
def stuck(x: int = 0) -> int:
    return x


@dataclass
class Api:
    url: str
    port: int
    client: httpx.Client


@pytest.fixture(scope="module")
def api(ray_cluster: Any, serve_port: int) -> Iterator[Api]:
    from serve_app.deployment import deploy

    names = ("RAYBEAM_AUTH_TOKENS", "RAYBEAM_PUBLIC_URL")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop("RAYBEAM_AUTH_TOKENS", None)
    port = serve_port
    os.environ["RAYBEAM_PUBLIC_URL"] = f"http://{PUBLIC}:{port}"
    try:
        stuck.register()
        url = deploy("127.0.0.1", port)
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/healthz").status_code == 200
            yield Api(url, port, client)
            ids = [t.id for t in raybeam.list_tasks(queue=stuck.name)]
            if ids:
                client.request("DELETE", "/v2/task/cancel/", json={"task_ids": ids})
        remove_app()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def forbidden(answer: httpx.Response, about: str) -> None:
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert set(body) == {"error", "detail"} and body["error"] == "Forbidden"
    assert about in body["detail"]


def tasks(api: Api) -> int:
    return len(raybeam.list_tasks(queue=stuck.name))


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "127.0.0.1.evil.example:{port}",
        "localhost.evil.example",
        "10.0.0.8:{port}",
        "",
        "raybeam.test.evil.example:{port}",
    ],
)
def test_a_request_for_another_host_is_403_and_changes_nothing(api: Api, host: str) -> None:
    before = tasks(api)
    headers = {"Host": host.format(port=api.port)}
    forbidden(api.client.get("/v2/task/?limit=1", headers=headers), "Host")
    forbidden(api.client.get("/healthz", headers=headers), "Host")
    forbidden(api.client.post(f"/{stuck.name}", json={"x": 1}, headers=headers), "Host")
    forbidden(
        api.client.request("DELETE", "/v2/task/cancel/", json={"task_ids": []}, headers=headers),
        "Host",
    )
    assert tasks(api) == before


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "app.localhost:{port}",
        "[::1]:{port}",
        "127.0.0.2:{port}",
        f"{PUBLIC}:{{port}}",
        PUBLIC.upper(),
    ],
)
def test_loopback_names_and_the_public_host_are_served(api: Api, host: str) -> None:
    answer = api.client.get("/v2/task/?limit=1", headers={"Host": host.format(port=api.port)})
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"tasks", "next_cursor"}


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example:{port}",
        "http://localhost:3000",
        "http://127.0.0.1:{other}",
        "null",
        "file://",
        "chrome-extension://abc",
    ],
)
def test_a_request_from_another_origin_is_403_and_changes_nothing(api: Api, origin: str) -> None:
    before = tasks(api)
    origin = origin.format(port=api.port, other=api.port + 1)
    # what any web page can send without a CORS preflight: a text/plain POST
    answer = api.client.post(
        f"/{stuck.name}",
        content=b'{"x": 1}',
        headers={"Origin": origin, "Content-Type": "text/plain"},
    )
    forbidden(answer, "Origin")
    forbidden(api.client.get("/v2/task/?limit=1", headers={"Origin": origin}), "Origin")
    assert tasks(api) == before


def test_the_same_origin_and_the_public_origin_are_served(api: Api) -> None:
    before = tasks(api)
    for origin, host in [
        (f"http://127.0.0.1:{api.port}", f"127.0.0.1:{api.port}"),
        (f"http://localhost:{api.port}", f"localhost:{api.port}"),
        (f"http://{PUBLIC}:{api.port}", f"{PUBLIC}:{api.port}"),
        (f"http://{PUBLIC}:{api.port}", f"127.0.0.1:{api.port}"),  # behind a proxy
    ]:
        answer = api.client.post(
            f"/{stuck.name}", json={"x": 1}, headers={"Origin": origin, "Host": host}
        )
        assert answer.status_code == 200, (origin, host, answer.text)
    assert tasks(api) == before + 4


def test_deploy_refuses_to_bind_beyond_loopback_with_no_token(api: Api) -> None:
    from serve_app.deployment import deploy

    for host in ("0.0.0.0", "::", "192.0.2.10"):
        with pytest.raises(InvalidConfiguration, match="--insecure-no-auth"):
            deploy(host, api.port + 1)
    assert api.client.get("/healthz").status_code == 200  # the running API is untouched
