"""S3 for tests: moto's server mode on loopback, reached over real HTTP.

By default the server runs in a child process, so its memory (moto keeps multipart
uploads in RAM) and its threads stay out of the test process; `in_process=True` runs
`ThreadedMotoServer` in a thread instead, which starts faster.

    with moto_s3() as endpoint:
        create_bucket(endpoint, "outputs")
        storage = Storage("s3://outputs/raybeam")   # finds the endpoint in the environment

Wrap it in a fixture where needed:

    @pytest.fixture(scope="session")
    def s3_endpoint() -> Iterator[str]:
        with moto_s3() as endpoint:
            yield endpoint
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

REGION = "us-east-1"

#: dummy credentials, so neither boto3 nor s3fs ever looks for real ones
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    # no stray ~/.aws profile can change the region, endpoint or signature
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}

_CHILD = """
import logging
import sys
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on our stderr

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # runs until the parent closes our stdin (or dies)
server.stop()
"""


@contextmanager
def moto_s3(*, in_process: bool = False, set_env: bool = True) -> Iterator[str]:
    """Run an S3 server on 127.0.0.1 and yield its endpoint URL, e.g. `http://127.0.0.1:38211`.

    With `set_env` the AWS variables in `AWS_ENV` and `AWS_ENDPOINT_URL_S3` are set for the
    duration (and inherited by processes started meanwhile, such as Ray workers), then restored.
    """
    saved = {
        name: os.environ.get(name) for name in [*AWS_ENV, "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"]
    }
    try:
        with _in_thread() if in_process else _in_child() as endpoint:
            _wait_until_up(endpoint)
            if set_env:
                os.environ.update(AWS_ENV)
                os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
                os.environ.pop("AWS_PROFILE", None)
            yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for the server at `endpoint`, with the dummy credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def create_bucket(endpoint: str, bucket: str) -> None:
    """Create `bucket` on the server at `endpoint` (no error if it exists already)."""
    client = s3_client(endpoint)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    finally:
        client.close()


@contextmanager
def _in_thread() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    finally:
        server.stop()


@contextmanager
def _in_child() -> Iterator[str]:
    env = {**os.environ, **AWS_ENV}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"moto server did not start (exit code {child.poll()})")
        yield f"http://127.0.0.1:{line}"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def _wait_until_up(endpoint: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=2.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
