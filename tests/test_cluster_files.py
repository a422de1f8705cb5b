"""Offline checks of the `ray up` files in cluster/, through Ray's own code.

Nothing here reaches a cloud or starts Ray: the launcher YAMLs go through the schema and
config preparation that `ray up` runs before it calls a cloud API, AWS's instance types go
through Ray's own resource fill-out (with EC2's answer written down here), and raybeam's
queues in cluster/example/app.py ask Ray's autoscaler for nodes as they would on a fresh
cluster. The KubeRay and Docker files are checked in test_cluster_kuberay.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
from ray.autoscaler._private.aws import node_provider as aws_node_provider
from ray.autoscaler._private.aws.config import DEFAULT_AMI, _check_ami
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.util import accelerators

from raybeam import task_queue
from raybeam.config import parse_tokens
from raybeam.resources import GPU_TYPES
from tests.support.cluster import (
    CLUSTER,
    REPO,
    index_packages,
    load_queues,
    load_yaml,
    nodes_to_launch,
    pip_install_targets,
    ray_start_command,
    ray_start_params,
    task_demand,
)

AWS = CLUSTER / "aws-gpu.yaml"
ONPREM = CLUSTER / "onprem.yaml"
AWS_IAM = CLUSTER / "aws-iam.yaml"
LAUNCHERS = [pytest.param(AWS, id="aws"), pytest.param(ONPREM, id="onprem")]

# What EC2's DescribeInstanceTypes says about these types (the fields Ray reads).
EC2_TYPES: dict[str, dict[str, Any]] = {
    "m5.xlarge": {"VCpuInfo": {"DefaultVCpus": 4}, "MemoryInfo": {"SizeInMiB": 16384}},
    "m5.2xlarge": {"VCpuInfo": {"DefaultVCpus": 8}, "MemoryInfo": {"SizeInMiB": 32768}},
    "g5.xlarge": {
        "VCpuInfo": {"DefaultVCpus": 4},
        "MemoryInfo": {"SizeInMiB": 16384},
        "GpuInfo": {"Gpus": [{"Name": "A10G", "Manufacturer": "NVIDIA", "Count": 1}]},
    },
    "g4dn.xlarge": {
        "VCpuInfo": {"DefaultVCpus": 4},
        "MemoryInfo": {"SizeInMiB": 16384},
        "GpuInfo": {"Gpus": [{"Name": "T4", "Manufacturer": "NVIDIA", "Count": 1}]},
    },
}
AWS_GPU_TYPES = {
    "ray.worker.gpu.a10g": ("g5.xlarge", accelerators.NVIDIA_TESLA_A10G),
    "ray.worker.gpu.t4": ("g4dn.xlarge", accelerators.NVIDIA_TESLA_T4),
}
# The minimum root volume of Ray's default AWS AMI (its snapshot's size), and of any DLAMI.
DLAMI_MIN_GB = 140
DLAMI_2204 = (
    "resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
    "base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("cluster file checks must stay offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def aws_config_as_the_autoscaler_sees_it(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """prepare_config, then Ray's AWS resource fill-out, with EC2's answer from EC2_TYPES."""
    config = prepare_config(load_yaml(AWS))
    instances = [{"InstanceType": name, **info} for name, info in EC2_TYPES.items()]
    monkeypatch.setattr(aws_node_provider, "list_ec2_instances", lambda *a, **k: instances)
    filled: dict[str, Any] = (
        aws_node_provider.AWSNodeProvider.fillout_available_node_types_resources(config)
    )
    return filled


def example_queues() -> dict[str, Any]:
    """The queues of the app folder the launchers mount at ~/app (cluster/example/app.py)."""
    return {q.name: q for q in load_queues(CLUSTER / "example" / "app.py")}


# ---- what Ray's launcher accepts ----------------------------------------------------------


@pytest.mark.parametrize("path", LAUNCHERS)
def test_launcher_matches_ray_schema(path: Path) -> None:
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(load_yaml(path), json.loads(schema_path.read_text()))


@pytest.mark.parametrize("path", LAUNCHERS)
def test_launcher_passes_ray_config_preparation(path: Path) -> None:
    prepared = prepare_config(load_yaml(path))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_onprem_bootstraps_like_ray_up() -> None:
    # The local provider's bootstrap is offline, so this is all of `ray up`'s config work.
    config = _bootstrap_config(load_yaml(ONPREM), no_config_cache=True)
    (node_type,) = config["available_node_types"].values()
    assert node_type["max_workers"] == len(config["provider"]["worker_ips"])


# ---- where raybeam and the queues come from -----------------------------------------------


@pytest.mark.parametrize("path", LAUNCHERS)
def test_raybeam_comes_from_the_checkout_not_an_index(path: Path) -> None:
    config = load_yaml(path)
    keys = ("initialization_commands", "setup_commands", "head_setup_commands")
    commands = [c for key in (*keys, "worker_setup_commands") for c in config[key]]
    targets = [t for c in commands for t in pip_install_targets(c)]
    # raybeam is not on PyPI: `pip install raybeam` installs nothing or someone else's code.
    assert "raybeam" not in index_packages(targets)
    mounts = config["file_mounts"]
    checkout = [remote for remote, local in mounts.items() if Path(REPO, local).resolve() == REPO]
    assert checkout, f"no file mount carries the raybeam checkout: {mounts}"
    assert any(t.rstrip("/") in checkout for t in targets), targets


@pytest.mark.parametrize("path", LAUNCHERS)
def test_file_mounts_exist_relative_to_the_checkout(path: Path) -> None:
    # `ray up` runs from the root of the checkout (cluster/README.md) and reads these paths.
    for remote, local in load_yaml(path)["file_mounts"].items():
        assert (REPO / local).exists(), f"{remote}: {local} is not in the checkout"


@pytest.mark.parametrize("path", LAUNCHERS)
def test_sync_leaves_the_venv_and_git_behind(path: Path) -> None:
    config = load_yaml(path)
    assert ".gitignore" in config["rsync_filter"]
    assert ".venv/" in (REPO / ".gitignore").read_text().split()
    assert "**/.git" in config["rsync_exclude"]


@pytest.mark.parametrize("path", LAUNCHERS)
def test_head_starts_ray_then_serves_the_mounted_queues(path: Path) -> None:
    config = load_yaml(path)
    commands = config["head_start_ray_commands"]
    params = ray_start_params(ray_start_command(commands))
    assert params["head"] is True
    assert params["port"] == 6379
    assert params["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    # The dashboard stays on the head's loopback: `ray dashboard` tunnels to it over SSH.
    assert params["dashboard_host"] in (None, "localhost", "127.0.0.1")
    serve = shlex.split(commands[-1].split("&&")[-1])
    assert serve[:2] == ["raybeam", "serve"] and serve[-1] == "--detach"
    app = serve[2]
    mount, _, name = app.rpartition("/")
    local = config["file_mounts"][mount]
    queues = load_queues(REPO / local / name)
    assert {"word_count", "gpu_check"} <= {q.name for q in queues}


@pytest.mark.parametrize("path", LAUNCHERS)
def test_every_node_gets_shared_storage_and_the_http_address(path: Path) -> None:
    config = load_yaml(path)
    setup = "\n".join(config["setup_commands"])
    assert "> ~/raybeam.env" in setup
    exports = dict(re.findall(r"'export (\w+)=([^']*)'", setup))
    assert exports["RAYBEAM_STORAGE"] == "s3://YOUR-BUCKET/raybeam"
    assert exports["RAYBEAM_HTTP_HOST"] == "0.0.0.0"
    assert exports["RAYBEAM_HTTP_PORT"] == "8000"
    assert exports["RAYBEAM_PUBLIC_URL"].startswith("http")
    # Ray worker processes inherit the raylet's environment, so each `ray start` and
    # `raybeam serve` must run with the env file sourced.
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    starts = [c for c in commands if "ray start" in c or "raybeam serve" in c]
    assert len(starts) == 3
    for command in starts:
        assert ". ~/raybeam.env &&" in command


# ---- the API token ----------------------------------------------------------------------


def run_env_setup(config: dict[str, Any], home: Path, head: bool) -> dict[str, str]:
    """Run a node's setup commands that write raybeam's settings (not the installs) in a
    scratch home, then source the env file as the start commands do."""
    keys = ["setup_commands", "head_setup_commands" if head else "worker_setup_commands"]
    commands = [
        c
        for key in keys
        for c in config[key]
        if "raybeam.env" in c or "raybeam.token" in c
        if not re.search(r"pip |apt-get|-m venv", c)
    ]
    shims = home / "bin"
    shims.mkdir(exist_ok=True)
    if not (shims / "python3").exists():
        (shims / "python3").symlink_to(sys.executable)
    venv = home / "raybeam-venv" / "bin"
    venv.mkdir(parents=True, exist_ok=True)
    (venv / "activate").write_text("")
    env = {"HOME": str(home), "PATH": f"{shims}:/usr/bin:/bin"}
    for command in commands:
        subprocess.run(["bash", "-c", command], env=env, check=True)
    out = subprocess.run(
        ["bash", "-c", ". ~/raybeam.env && env -0"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


@pytest.mark.parametrize("path", LAUNCHERS)
def test_head_makes_its_own_token_once(path: Path, tmp_path: Path) -> None:
    config = load_yaml(path)
    first = run_env_setup(config, tmp_path, head=True)
    # parse_tokens is what raybeam runs at start: it refuses the placeholder CHANGE-ME.
    (token,) = parse_tokens(first["RAYBEAM_AUTH_TOKENS"])
    assert len(token) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "raybeam.token").st_mode) == 0o600
    # A second `ray up` keeps the token that clients already hold.
    again = run_env_setup(config, tmp_path, head=True)
    assert again["RAYBEAM_AUTH_TOKENS"] == token
    # A new cluster gets a token of its own.
    other = tmp_path / "other"
    other.mkdir()
    assert run_env_setup(config, other, head=True)["RAYBEAM_AUTH_TOKENS"] != token


@pytest.mark.parametrize("path", LAUNCHERS)
def test_no_token_is_written_into_the_file(path: Path) -> None:
    text = path.read_text()
    assert "CHANGE-ME" not in text
    assert not re.search(r"RAYBEAM_AUTH_TOKENS=[\w-]", text)


# ---- AWS: node types, the scheduler's choices, AMI, disks, IAM -----------------------------


def test_aws_head_takes_no_tasks() -> None:
    config = prepare_config(load_yaml(AWS))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert head["max_workers"] == 0


@pytest.mark.parametrize("node_type", AWS_GPU_TYPES)
def test_aws_gpu_worker_type_declares_its_accelerator(
    node_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance_type, gpu_type = AWS_GPU_TYPES[node_type]
    config = aws_config_as_the_autoscaler_sees_it(monkeypatch)
    spec = config["available_node_types"][node_type]
    assert spec["node_config"]["InstanceType"] == instance_type
    assert spec["resources"]["GPU"] == 1
    assert spec["resources"][f"accelerator_type:{gpu_type}"] == 1
    assert spec["min_workers"] == 0
    assert 1 <= spec["max_workers"] <= config["max_workers"]


def test_aws_cpu_tasks_start_cpu_nodes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    config = aws_config_as_the_autoscaler_sees_it(monkeypatch)
    demand = task_demand(example_queues()["word_count"])
    assert "GPU" not in demand
    to_launch, unmet = nodes_to_launch(config, [demand] * 6)
    assert unmet == []
    assert set(to_launch) == {"ray.worker.cpu"}, to_launch


@pytest.mark.parametrize("node_type", AWS_GPU_TYPES)
def test_aws_gpu_tasks_start_the_matching_gpu_type(
    node_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = aws_config_as_the_autoscaler_sees_it(monkeypatch)
    _, gpu_type = AWS_GPU_TYPES[node_type]
    queue = task_queue(example_queues()["gpu_check"].fn, name=f"gpu_{gpu_type}", gpu=gpu_type)
    demand = task_demand(queue)
    assert demand[f"accelerator_type:{gpu_type}"] > 0
    to_launch, unmet = nodes_to_launch(config, [demand])
    assert unmet == []
    assert to_launch == {node_type: 1}


def test_aws_mixed_demand_starts_one_node_of_each_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    config = aws_config_as_the_autoscaler_sees_it(monkeypatch)
    queues = example_queues()
    demands = [task_demand(queues["word_count"])] * 6 + [task_demand(queues["gpu_check"])]
    to_launch, unmet = nodes_to_launch(config, demands)
    assert unmet == []
    assert to_launch == {"ray.worker.cpu": 1, "ray.worker.gpu.a10g": 1}


def test_aws_nodes_use_a_current_dlami_with_room_for_its_snapshot() -> None:
    config = prepare_config(load_yaml(AWS))
    _check_ami(config)  # what `ray up` does to a node type without an ImageId
    for name, spec in config["available_node_types"].items():
        node_config = spec["node_config"]
        # An empty ImageId would become Ray's default: the Ubuntu 18.04 DLAMI V71 (CUDA 11).
        assert node_config.get("ImageId") == DLAMI_2204, name
        assert node_config["ImageId"] not in DEFAULT_AMI.values()
        (root,) = node_config["BlockDeviceMappings"]
        assert root["DeviceName"] == "/dev/sda1"
        assert root["Ebs"]["VolumeSize"] >= DLAMI_MIN_GB, name


def test_aws_every_node_type_has_an_instance_profile_from_the_iam_template() -> None:
    config = load_yaml(AWS)
    resources = load_yaml(AWS_IAM)["Resources"]
    profiles = {
        r["Properties"]["InstanceProfileName"]: r["Properties"]["Roles"][0]["Ref"]
        for r in resources.values()
        if r["Type"] == "AWS::IAM::InstanceProfile"
    }
    for name, spec in config["available_node_types"].items():
        profile = spec["node_config"]["IamInstanceProfile"]["Name"]
        assert profile in profiles, f"{name}: {profile} is not made by aws-iam.yaml"
    head_profile = config["available_node_types"][config["head_node_type"]]["node_config"][
        "IamInstanceProfile"
    ]["Name"]
    head_role = resources[profiles[head_profile]]
    worker_roles = {
        profiles[spec["node_config"]["IamInstanceProfile"]["Name"]]
        for name, spec in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    # Every role reaches the bucket; the head may also hand the worker role to new nodes.
    for role in {profiles[head_profile], *worker_roles}:
        policies = resources[role]["Properties"]["ManagedPolicyArns"]
        assert {"Ref": "BucketAccess"} in policies, role
    passes = [
        statement["Resource"]
        for policy in head_role["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        if statement["Action"] == "iam:PassRole"
    ]
    assert [{"Fn::GetAtt": [role, "Arn"]} for role in sorted(worker_roles)] == passes
    bucket = resources["BucketAccess"]["Properties"]["PolicyDocument"]["Statement"]
    actions = {a for s in bucket for a in s["Action"]}
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions


def test_aws_images_match_the_installed_ray() -> None:
    docker = load_yaml(AWS)["docker"]
    for key in ("image", "head_image", "worker_image"):
        assert docker[key].startswith(f"rayproject/ray:{ray.__version__}-")
    assert docker["worker_image"].endswith("-gpu")


# ---- on-prem ---------------------------------------------------------------------------


def test_onprem_installs_python3_venv_before_making_the_venv() -> None:
    setup = load_yaml(ONPREM)["setup_commands"]
    (make,) = [c for c in setup if "-m venv" in c]
    # Debian and Ubuntu's python3 lacks ensurepip until python3-venv is installed.
    assert re.search(r"apt-get install -y( -q)? python3-venv", make), make
    assert "sudo apt-get update" in make


def test_onprem_workers_let_ray_detect_gpus_and_their_type() -> None:
    config = load_yaml(ONPREM)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        params = ray_start_params(ray_start_command(config[key]))
        # A hard-coded count or type would mislabel machines with other (or no) GPUs.
        assert params["num_gpus"] is None, key
        assert params["resources"] in (None, "{}"), key
    params = ray_start_params(ray_start_command(config["worker_start_ray_commands"]))
    assert params["address"] == "$RAY_HEAD_IP:6379"


@pytest.mark.parametrize(
    ("device", "gpu_type"),
    [
        ("Tesla T4", "T4"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H200", "H200"),
    ],
)
def test_ray_names_each_gpu_type_raybeam_knows(device: str, gpu_type: str) -> None:
    # What a worker's `ray start` advertises as accelerator_type:<type> from the driver's
    # device name: the names raybeam's gpu= accepts.
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    assert gpu_type in GPU_TYPES
    assert NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(device) == gpu_type
