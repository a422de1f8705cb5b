"""Offline checks of the launch files in cluster/, through Ray's own validators.

Nothing here reaches a cloud or starts Ray: the launcher YAMLs go through the schema
and config preparation that `ray up` runs before it calls a cloud API, and the
RayService's Serve config goes through the pydantic model that Serve deploys from.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import socket
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.node_provider_availability_tracker import (
    NodeAvailabilitySummary,
)
from ray.autoscaler._private.resource_demand_scheduler import (
    _default_utilization_scorer,
    get_nodes_for,
)
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.scripts.scripts import start as ray_start_cli
from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema
from ray.util import accelerators

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
ONPREM = CLUSTER / "onprem.yaml"
RAYSERVICE = CLUSTER / "kuberay" / "rayservice.yaml"
LAUNCHERS = [pytest.param(AWS, id="aws"), pytest.param(ONPREM, id="onprem")]

# What EC2 reports for these instance types; `ray up` fills CPU in from the EC2 API,
# which these tests do not call.
EC2_VCPUS = {"m5.xlarge": 4, "g5.xlarge": 4, "g4dn.xlarge": 4}
AWS_GPU_TYPES = {
    "ray.worker.gpu.a10g": ("g5.xlarge", accelerators.NVIDIA_TESLA_A10G),
    "ray.worker.gpu.t4": ("g4dn.xlarge", accelerators.NVIDIA_TESLA_T4),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("cluster file checks must stay offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def ray_start_params(command: str) -> dict[str, Any]:
    """Parse the `ray start` in a shell command line with Ray's own CLI definition."""
    argv = shlex.split(command)
    args = argv[argv.index("start", argv.index("ray")) + 1 :]
    with ray_start_cli.make_context("start", args) as ctx:
        return dict(ctx.params)


def ray_start_command(commands: list[str]) -> str:
    (command,) = [c for c in commands if "ray start" in c]
    return command


def env_file_exports(config: dict[str, Any]) -> dict[str, str]:
    setup = "\n".join(config["setup_commands"])
    assert "> ~/raybeam.env" in setup
    return dict(re.findall(r"'export (\w+)=([^']*)'", setup))


def accelerator_resource(gpu_type: str) -> str:
    return f"accelerator_type:{gpu_type}"


@pytest.mark.parametrize("path", LAUNCHERS)
def test_launcher_matches_ray_schema(path: Path) -> None:
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(load(path), json.loads(schema_path.read_text()))


@pytest.mark.parametrize("path", LAUNCHERS)
def test_launcher_passes_ray_config_preparation(path: Path) -> None:
    prepared = prepare_config(load(path))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_onprem_bootstraps_like_ray_up() -> None:
    # The local provider's bootstrap is offline, so this is all of `ray up`'s config work.
    config = _bootstrap_config(load(ONPREM), no_config_cache=True)
    (node_type,) = config["available_node_types"].values()
    assert node_type["max_workers"] == len(config["provider"]["worker_ips"])


def test_aws_head_is_cpu_only() -> None:
    config = prepare_config(load(AWS))
    head = config["available_node_types"][config["head_node_type"]]
    assert "GPU" not in head["resources"]
    assert head["max_workers"] == 0


@pytest.mark.parametrize("node_type", AWS_GPU_TYPES)
def test_aws_gpu_worker_type_declares_its_accelerator(node_type: str) -> None:
    instance_type, gpu_type = AWS_GPU_TYPES[node_type]
    config = prepare_config(load(AWS))
    spec = config["available_node_types"][node_type]
    assert spec["node_config"]["InstanceType"] == instance_type
    assert spec["resources"] == {"GPU": 1, accelerator_resource(gpu_type): 1}
    assert spec["min_workers"] == 0
    assert 1 <= spec["max_workers"] <= config["max_workers"]


@pytest.mark.parametrize("node_type", AWS_GPU_TYPES)
def test_autoscaler_launches_the_matching_gpu_type(node_type: str) -> None:
    config = prepare_config(load(AWS))
    node_types = config["available_node_types"]
    for spec in node_types.values():
        spec["resources"] = {
            "CPU": EC2_VCPUS[spec["node_config"]["InstanceType"]],
            **spec["resources"],
        }
    _, gpu_type = AWS_GPU_TYPES[node_type]
    # What Ray asks for a task with num_gpus=1 and accelerator_type=<gpu_type>.
    demand = {"CPU": 1, "GPU": 1, accelerator_resource(gpu_type): 0.001}
    scorer = functools.partial(
        _default_utilization_scorer,
        node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
    )

    to_add, unmet = get_nodes_for(
        node_types,
        existing_nodes={config["head_node_type"]: 1},
        head_node_type=config["head_node_type"],
        max_to_add=config["max_workers"],
        resources=[demand],
        utilization_scorer=scorer,
    )

    assert dict(to_add) == {node_type: 1}
    assert unmet == []


def test_onprem_workers_declare_gpu_and_accelerator_type() -> None:
    config = load(ONPREM)
    params = ray_start_params(ray_start_command(config["worker_start_ray_commands"]))
    assert params["address"] == "$RAY_HEAD_IP:6379"
    assert params["num_gpus"] == 1
    assert json.loads(params["resources"]) == {
        accelerator_resource(accelerators.NVIDIA_TESLA_A10G): 1
    }


@pytest.mark.parametrize("path", LAUNCHERS)
def test_head_starts_ray_then_raybeam_serve(path: Path) -> None:
    config = load(path)
    commands = config["head_start_ray_commands"]
    params = ray_start_params(ray_start_command(commands))
    assert params["head"] is True
    assert params["port"] == 6379
    assert params["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    assert commands[-1].endswith("raybeam serve ~/app.py --detach")
    assert config["file_mounts"] == {"~/app.py": "./app.py"}


@pytest.mark.parametrize("path", LAUNCHERS)
def test_every_node_gets_shared_storage_and_the_http_address(path: Path) -> None:
    config = load(path)
    exports = env_file_exports(config)
    assert exports["RAYBEAM_STORAGE"] == "s3://YOUR-BUCKET/raybeam"
    assert exports["RAYBEAM_HTTP_HOST"] == "0.0.0.0"
    assert exports["RAYBEAM_HTTP_PORT"] == "8000"
    # Ray worker processes inherit the raylet's environment, so each `ray start` and
    # `raybeam serve` must run with the env file sourced.
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    starts = [c for c in commands if "ray start" in c or "raybeam serve" in c]
    assert len(starts) == 3
    for command in starts:
        assert ". ~/raybeam.env &&" in command


@pytest.mark.parametrize("path", LAUNCHERS)
def test_setup_installs_raybeam(path: Path) -> None:
    setup = load(path)["setup_commands"]
    assert any(re.search(r"pip install .*\"raybeam\"", c) for c in setup)
    assert "RAYBEAM_PIP_SPEC" in path.read_text()


def test_aws_images_match_the_installed_ray() -> None:
    docker = load(AWS)["docker"]
    for key in ("image", "head_image", "worker_image"):
        assert docker[key].startswith(f"rayproject/ray:{ray.__version__}-")
    assert docker["worker_image"].endswith("-gpu")


def test_rayservice_is_a_kuberay_v1_rayservice_for_this_ray() -> None:
    service = load(RAYSERVICE)
    assert service["apiVersion"] == "ray.io/v1"
    assert service["kind"] == "RayService"
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            assert container["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"


def test_rayservice_serve_config_validates_with_serve_schema() -> None:
    raw = yaml.safe_load(load(RAYSERVICE)["spec"]["serveConfigV2"])
    config = ServeDeploySchema.model_validate(raw)

    # The models ignore unknown keys, so a misspelt key would pass silently.
    assert set(raw) <= set(ServeDeploySchema.model_fields)
    assert set(raw["http_options"]) <= set(HTTPOptionsSchema.model_fields)
    for app in raw["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields)

    assert config.http_options.host == "0.0.0.0"
    assert config.http_options.port == 8000
    (app,) = config.applications
    assert app.import_path == "serve_app.deployment:app"
    assert app.route_prefix == "/"
    runtime_env = RuntimeEnv(**app.runtime_env)
    assert runtime_env["env_vars"]["RAYBEAM_STORAGE"] == "s3://YOUR-BUCKET/raybeam"
    assert runtime_env["env_vars"]["RAYBEAM_HTTP_PORT"] == "8000"


def test_rayservice_gpu_group_requests_a_gpu_and_declares_its_type() -> None:
    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] == 0
    assert group["maxReplicas"] >= 1
    (container,) = group["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1

    # KubeRay turns each rayStartParams entry into `--key=value` on a shell line.
    start_params = group["rayStartParams"]
    assert all(isinstance(value, str) for value in start_params.values())
    line = "ray start --address=head:6379 " + " ".join(
        f"--{key}={value}" for key, value in start_params.items()
    )
    params = ray_start_params(line)
    assert params["num_gpus"] == 1
    assert json.loads(params["resources"]) == {
        accelerator_resource(accelerators.NVIDIA_TESLA_A10G): 1
    }


def test_rayservice_takes_auth_tokens_from_a_secret_on_every_pod() -> None:
    cluster = load(RAYSERVICE)["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {item["name"]: item for item in container.get("env", [])}
            assert "secretKeyRef" in env["RAYBEAM_AUTH_TOKENS"]["valueFrom"]
