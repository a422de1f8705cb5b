"""A multi-node Ray cluster on one machine, on loopback: one `ray start` per node.

Each node is its own `ray start --block` in its own process group, with its own ports, so a
node can be killed alone (its raylet, agents and workers together) and the cluster stopped
without `ray stop`, which would stop every Ray on the machine. Nothing listens beyond
127.0.0.1.

Joining a head by a loopback address needs two things Ray's CLI does not do on its own:
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (which keeps Ray on 127.0.0.1) makes `ray start
--address` refuse to join, and with it at 1 Ray swaps a loopback `--address` for the
machine's external address. So a joining node runs Ray's CLI through this module, which
allows the join and keeps the address as given (`python examples/local_nodes.py start ...`),
while every process it starts sees the variable at 0 and stays on loopback.

    with LocalCluster(Path("/tmp/rb-nodes")) as cluster:
        cluster.add("cpu", num_cpus=2)
        ray.init(address=cluster.address)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

#: how often the head checks that nodes are alive, and after how many misses one is dead
HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
#: each node's object store: small, so three nodes fit on a laptop
OBJECT_STORE_BYTES = 100 * 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalCluster:
    """A head node and any number of worker nodes started with `ray start` on loopback.

    `env` is added to every node's environment (storage, credentials, raybeam settings), so
    the registry on the head and the tasks on the workers see the same settings. Token
    authentication is on, with a token of this cluster's own that drivers get through
    `driver_env()`.
    """

    def __init__(self, root: Path, env: dict[str, str] | None = None, head_cpus: int = 0) -> None:
        self.root = root
        self.temp = root / "ray"  # Ray's socket paths must stay short: keep `root` under /tmp
        self.token = secrets.token_hex(32)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, Node] = {}
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            **(env or {}),
            **self.driver_env(),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self._next_worker_port = 20_000 + (self.port % 50) * 150
        self.head_cpus = head_cpus

    def driver_env(self) -> dict[str, str]:
        """What a driver (or `ray.init` in this process) needs to join this cluster."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

    def __enter__(self) -> LocalCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_head()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- nodes -------------------------------------------------------------------------

    def _ports(self) -> list[str]:
        low = self._next_worker_port
        self._next_worker_port += 100
        return [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 99}",
        ]

    def _start(self, name: str, argv: list[str], resources: dict[str, float]) -> Node:
        log = self.root / f"node-{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = Node(name, process, log, resources)
        self.nodes[name] = node
        deadline = time.monotonic() + 90
        while b"Ray runtime started" not in log.read_bytes():
            if not node.alive or time.monotonic() > deadline:
                self.kill(name)
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Ray node {name} did not start:\n{tail}")
            time.sleep(0.2)
        return node

    def start_head(self) -> Node:
        argv = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={self.port}", f"--temp-dir={self.temp}",
            f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}", "--disable-usage-stats",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--system-config={json.dumps(HEALTH)}", *self._ports(),
        ]  # fmt: skip
        return self._start("head", argv, {"CPU": self.head_cpus})

    def add(
        self,
        name: str,
        num_cpus: int,
        num_gpus: int = 0,
        resources: dict[str, float] | None = None,
    ) -> Node:
        """Start a worker node that joins the head; returns once its `ray start` is up."""
        argv = [
            sys.executable, __file__, "start", "--block",
            f"--address={self.address}", "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
            f"--resources={json.dumps(resources or {})}",
            f"--object-store-memory={OBJECT_STORE_BYTES}", *self._ports(),
        ]  # fmt: skip
        shown = {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})}
        return self._start(name, argv, shown)

    def kill(self, name: str) -> None:
        """Kill a node at once, as a machine that loses power: every process of it."""
        node = self.nodes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop every node of this cluster, workers first, and remove its files."""
        for name in [n for n in self.nodes if n != "head"] + (
            ["head"] if "head" in self.nodes else []
        ):
            self.kill(name)
        shutil.rmtree(self.temp, ignore_errors=True)


def wait_for_new_node(known: set[str], timeout: float = 60) -> str:
    """Wait until the connected cluster has an alive node whose id is not in `known`, and
    return its id. (Not a count of alive nodes: a node killed just before may be marked dead
    by Ray while the new one joins, which a count would take for no new node at all.)"""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        new = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in known]
        if len(new) == 1:
            return str(new[0])
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(new)} new alive nodes, not 1")
        time.sleep(0.2)


def _join() -> int:
    """Ray's CLI, allowed to join a head by a loopback address (see the module's docstring)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
    import ray._private.services as services
    from ray.scripts.scripts import main

    # the processes this node starts (raylet, agents, workers) stay on loopback
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    services.resolve_ip_for_localhost = lambda host: host
    # and never asks which address routes off the machine (a UDP "connect" to 8.8.8.8)
    services.node_ip_address_from_perspective = lambda address=None: "127.0.0.1"
    main()
    return 0


if __name__ == "__main__":
    sys.exit(_join())
