"""raybeam on a multi-node Ray cluster with its state and outputs on S3, all on this machine.

A head node (the registry and the HTTP API; no CPUs for tasks, as in cluster/) and two
worker nodes, each its own `ray start` on loopback: one with a logical GPU typed A10G and
one CPU, one with four CPUs. Storage is S3: moto's server on loopback, unless
RAYBEAM_STORAGE already names an s3:// URL and AWS_ENDPOINT_URL_S3 its endpoint.

It runs what a team does on a real cluster, and checks each step:
1. CPU tasks from Python land on the CPU node, not the GPU node, while it has room;
2. a GPU-typed task lands on the GPU node;
3. a task enqueued over HTTP with a token, polled until complete, posts its webhook; its
   output, saved on a worker node straight to S3, downloads through its presigned link;
4. the CPU node is killed while a two-CPU task runs there: the task runs again once a new
   node joins (no other node has two CPUs) and completes;
5. the registry is killed with tasks in flight: every one completes after its restart.

Run it with `scripts/cluster-demo` (or `python examples/multi_node.py` in the venv); the
test suite runs it too (tests/test_multi_node.py). It prints each step and its figures.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from local_nodes import LocalCluster, free_port, wait_for_new_node

TOKEN = "cluster-demo-" + uuid.uuid4().hex[:12]
LOOPBACK_ONLY = {
    # webhooks may reach this machine's receiver (SPEC §10 refuses loopback by default)
    "RAYBEAM_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    # Ray's dashboard agent probes cloud metadata addresses: a closed loopback proxy refuses
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
}
AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def say(line: str) -> None:
    print(line, flush=True)


@contextmanager
def s3_storage() -> Iterator[dict[str, str]]:
    """The environment that puts raybeam's storage on S3: moto's server here, or the given."""
    storage = os.environ.get("RAYBEAM_STORAGE", "")
    if storage.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL_S3"):
        yield {"RAYBEAM_STORAGE": storage}
        return
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    try:
        bucket = "raybeam-" + uuid.uuid4().hex[:8]
        boto3.client("s3", endpoint_url=endpoint, **_boto_auth()).create_bucket(Bucket=bucket)
        yield {**AWS, "AWS_ENDPOINT_URL_S3": endpoint, "RAYBEAM_STORAGE": f"s3://{bucket}/raybeam"}
    finally:
        server.stop()


def _boto_auth() -> dict[str, str]:
    return {
        "region_name": AWS["AWS_REGION"],
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
    }


class Hooks(BaseHTTPRequestHandler):
    """A webhook receiver on loopback: keeps each body it is sent."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Hooks.received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        return json.load(response)


def answers(url: str) -> bool:
    try:
        return bool(http("GET", url)["status"] == "COMPLETE")
    except OSError:  # urllib's errors, refused connections and timeouts among them
        return False


def download(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        return bytes(response.read())


def content(seed: int) -> bytes:
    return random.Random(seed).randbytes(200_000 + seed)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def main() -> None:
    started = time.monotonic()
    os.environ.update(LOOPBACK_ONLY)
    root = Path(tempfile.mkdtemp(prefix="rb-nodes-", dir="/tmp"))
    with s3_storage() as storage_env:
        os.environ.update(storage_env, RAYBEAM_AUTH_TOKENS=TOKEN)
        with LocalCluster(root) as cluster:
            os.environ.update(cluster.driver_env())
            try:
                run(cluster)
            except BaseException:
                traceback.print_exc()  # now: after the cluster is gone, the driver cannot end
                say(f"the nodes' logs are in {root}")
                raise
            finally:
                import ray

                ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    say(f"all steps passed in {time.monotonic() - started:.0f} s")


def run(cluster: LocalCluster) -> None:
    import ray
    from ray import serve

    import raybeam
    from raybeam import Output, TaskContext, task_queue
    from raybeam.config import REGISTRY_NAME, REGISTRY_NAMESPACE
    from serve_app.deployment import QUIET, deploy

    ray.init(address=cluster.address, logging_level="ERROR")
    node_ids: dict[str, str] = {}

    def join(name: str, **kwargs: Any) -> None:
        known = {n["NodeID"] for n in ray.nodes()}  # alive or dead
        t0 = time.monotonic()
        cluster.add(name, **kwargs)
        node_ids[name] = wait_for_new_node(known)
        say(f"node {name} joined in {time.monotonic() - t0:.1f} s: {cluster.nodes[name].resources}")

    join("gpu", num_cpus=1, num_gpus=1, resources={"accelerator_type:A10G": 1})
    # 8 logical CPUs: with two or three tasks running it stays under Ray's spread threshold
    # (half its CPUs), so it has room beyond doubt and Ray's scheduler keeps CPU tasks off
    # the GPU node (with 4, a full-suite run once met two 0.5 s tasks at the threshold, and
    # one went to the GPU node)
    join("cpu", num_cpus=8)

    def name_of(node: str) -> str:
        return next(name for name, known in node_ids.items() if known == node)

    def here() -> str:
        return str(ray.get_runtime_context().get_node_id())

    @task_queue(name="mn_cpu", cpu=1, retries=0)
    def where(seconds: float = 0.0) -> str:
        time.sleep(seconds)
        return here()

    @task_queue(name="mn_gpu", cpu=1, gpu="A10G", retries=0)
    def gpu_where() -> dict[str, Any]:
        return {"node": here(), "gpus": [str(g) for g in ray.get_gpu_ids()]}

    @task_queue(name="mn_render", cpu=1, retries=1)
    def render(seed: int) -> dict[str, Any]:
        Output.from_bytes(f"render-{seed}.bin", content(seed)).save()
        return {"node": here()}

    @task_queue(name="mn_long", cpu=2, retries=2)
    def long_job(context: TaskContext) -> dict[str, Any]:
        if context.attempt == 1:
            time.sleep(300)  # its node goes away first
        return {"node": here(), "attempt": context.attempt}

    # 1. CPU tasks land on the CPU node while it has room
    t0 = time.monotonic()
    landed = [name_of(where.put().result(timeout=120)) for _ in range(3)]
    pair = [where.put(seconds=0.5), where.put(seconds=0.5)]
    landed += [name_of(t.result(timeout=60)) for t in pair]
    assert landed == ["cpu"] * 5, landed
    say(
        f"1. {len(landed)} CPU tasks from Python, all on the cpu node ({time.monotonic() - t0:.1f} s)"
    )

    # 2. a GPU-typed task lands on the GPU node
    got = gpu_where.put().result(timeout=120)
    assert name_of(got["node"]) == "gpu" and got["gpus"], got
    say(f"2. the A10G task ran on the gpu node with GPU ids {got['gpus']}")

    # 3. HTTP with a token, polling, a webhook, an output from a worker through S3
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    port = free_port()
    # one HTTP proxy, on the head: every node here shares 127.0.0.1, where a proxy per node
    # (Serve's default, right on a real cluster) would find its port taken
    serve.start(
        proxy_location="HeadOnly",
        http_options={"host": "127.0.0.1", "port": port},
        logging_config=QUIET,
    )
    render.register()  # as `raybeam serve` does for an app file's queues
    base = deploy("127.0.0.1", port)
    t0 = time.monotonic()
    task_id = http(
        "POST", f"{base}/taskqueue/mn_render", {"kwargs": {"seed": 7}, "callback_url": hook}
    )["task_id"]
    polls = 0
    while (record := http("GET", f"{base}/v2/task/{task_id}/"))["status"] != "COMPLETE":
        assert record["status"] in {"PENDING", "RUNNING"}, record
        polls += 1
        time.sleep(0.2)
    assert name_of(record["result"]["node"]) in {"cpu", "gpu"}, record
    wait_until(lambda: Hooks.received, 30, "no webhook arrived")
    (posted,) = Hooks.received
    assert posted["task_id"] == task_id and posted["status"] == "COMPLETE", posted
    (output,) = record["outputs"]
    assert output["url"].startswith(os.environ["AWS_ENDPOINT_URL_S3"]), output
    assert "X-Amz-Signature=" in output["url"], output
    assert download(output["url"]) == content(7)
    python_task = render.put(seed=8)
    python_task.result(timeout=60)
    (python_output,) = python_task.outputs()
    assert download(python_output.url) == content(8)
    say(
        f"3. HTTP task {task_id} COMPLETE after {polls} polls on the {name_of(record['result']['node'])} "
        f"node, webhook received, 2 outputs downloaded from S3 through presigned links "
        f"({time.monotonic() - t0:.1f} s)"
    )

    # 4. the node running a task is killed; the task runs again when a node is back
    job = long_job.put()
    wait_until(lambda: job.status().value == "RUNNING", 60, "the long task never started")
    time.sleep(0.5)  # past its start report
    killed_at = time.monotonic()
    cluster.kill("cpu")
    wait_until(lambda: job.status().value != "RUNNING", 60, "the lost attempt was never noticed")
    noticed = time.monotonic() - killed_at
    join("cpu2", num_cpus=2)
    got = job.result(timeout=120)
    took = time.monotonic() - killed_at
    assert got["attempt"] == 2 and name_of(got["node"]) == "cpu2", got
    say(
        f"4. cpu node killed: the registry noticed in {noticed:.1f} s, the task ran again on "
        f"the new node and completed {took:.1f} s after the kill"
    )

    # 5. the registry is killed with tasks in flight
    inflight = where.map([{"seconds": 2.0} for _ in range(6)])
    wait_until(lambda: any(t.status().value == "RUNNING" for t in inflight), 60, "nothing started")
    t0 = time.monotonic()
    ray.kill(ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE), no_restart=False)
    results = [t.result(timeout=120) for t in inflight]
    statuses = {t.status().value for t in inflight}
    assert statuses == {"COMPLETE"} and all(results), statuses
    say(
        f"5. registry killed with {len(inflight)} tasks in flight: all COMPLETE "
        f"{time.monotonic() - t0:.1f} s later"
    )
    # the API's replica may have lived on the killed node: Serve brings it back elsewhere
    wait_until(lambda: answers(f"{base}/v2/task/{task_id}/"), 90, "the HTTP API never came back")
    say("6. the HTTP API answers after the node loss and the registry restart")
    total = 5 + 1 + 2 + 1 + len(inflight)
    say(f"{total} tasks on {len(node_ids)} worker nodes, storage {raybeam.settings().storage_url}")
    receiver.shutdown()
    serve.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # serve_app, from a checkout
    main()
