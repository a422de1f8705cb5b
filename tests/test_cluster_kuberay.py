"""Offline checks of cluster/kuberay/rayservice.yaml and the Dockerfile its pods run.

The manifest goes through KubeRay's own CRDs (../shared/kuberay/) with unknown fields
rejected, as `kubectl apply --validate=strict` would; the Ray cluster it asks for goes
through the Ray autoscaler's own derivation of node types from a RayCluster, then Ray's
scheduler; `serveConfigV2` goes through Serve's schema and its import path through Serve's
own builder call, with the queue file the image holds.
"""

from __future__ import annotations

import fnmatch
import json
import socket
import sys
from typing import Any

import pytest
import ray
import yaml
from ray._common.utils import import_attr
from ray.autoscaler._private.kuberay.autoscaling_config import (
    _derive_autoscaling_config_from_ray_cr,
)
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema
from ray.util import accelerators

from raybeam import connection
from raybeam.queue import TaskQueue
from tests.support.cluster import (
    CLUSTER,
    REPO,
    dockerfile_args,
    dockerfile_copies,
    dockerfile_instructions,
    image_path_in_repo,
    index_packages,
    kuberay_manifest_errors,
    load_documents,
    load_queues,
    nodes_to_launch,
    pip_install_targets,
    ray_start_params,
    task_demand,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RAYSERVICE = CLUSTER / "kuberay" / "rayservice.yaml"
DOCKERFILE = REPO / "Dockerfile"
# Ray's token authentication, which KubeRay's authOptions turns on, came with Ray 2.52.
RAY_TOKEN_AUTH = (2, 52)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("cluster file checks must stay offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in load_documents(RAYSERVICE)}


def service() -> dict[str, Any]:
    return documents()["RayService"]


def ray_cluster() -> dict[str, Any]:
    return service()["spec"]["rayClusterConfig"]


def groups() -> list[dict[str, Any]]:
    cluster = ray_cluster()
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def serve_config() -> dict[str, Any]:
    raw = yaml.safe_load(service()["spec"]["serveConfigV2"])
    assert isinstance(raw, dict)
    return raw


def as_ray_cluster() -> dict[str, Any]:
    """The RayCluster that KubeRay makes from the RayService."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "raybeam-raycluster", "namespace": "default"},
        "spec": ray_cluster(),
    }


def autoscaling_config() -> dict[str, Any]:
    """What Ray's autoscaler in the head pod derives from that RayCluster."""
    config: dict[str, Any] = _derive_autoscaling_config_from_ray_cr(as_ray_cluster())
    return config


def example_queues() -> dict[str, TaskQueue[Any, Any]]:
    return {q.name: q for q in load_queues(CLUSTER / "example" / "app.py")}


# ---- KubeRay's CRDs, strictly ------------------------------------------------------------


def test_rayservice_validates_strictly_against_kuberay_crd() -> None:
    errors = kuberay_manifest_errors(service(), "ray.io_rayservices.yaml")
    assert errors == []


def test_its_ray_cluster_validates_strictly_against_the_raycluster_crd() -> None:
    assert kuberay_manifest_errors(as_ray_cluster(), "ray.io_rayclusters.yaml") == []


def test_strict_validation_rejects_unknown_fields_and_repeated_keys() -> None:
    # The check itself: what `kubectl apply --validate=strict` and the API server refuse.
    manifest = service()
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParam"] = {}
    manifest["spec"].setdefault("upgradeStrategy", {})["typ"] = "None"
    (container,) = head["template"]["spec"]["containers"]
    container["env"] = [{"name": "X", "value": "1"}, {"name": "X", "value": "2"}]
    errors = kuberay_manifest_errors(manifest, "ray.io_rayservices.yaml")
    assert any("'rayStartParam' was unexpected" in e for e in errors), errors
    assert any("'typ' was unexpected" in e for e in errors), errors
    assert any(e.endswith("containers[].env: ('X',)") for e in errors), errors


def test_the_other_documents_are_a_service_account_for_s3() -> None:
    docs = documents()
    assert set(docs) == {"RayService", "ServiceAccount"}
    account = docs["ServiceAccount"]
    assert account["apiVersion"] == "v1"
    assert set(account) == {"apiVersion", "kind", "metadata"}
    # IRSA: the pods get this IAM role's S3 access (workers write task outputs themselves).
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.startswith("arn:aws:iam::") and ":role/" in role
    for group in groups():
        assert group["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


# ---- one registry per storage, and what is exposed ---------------------------------------


def test_upgrades_never_run_two_registries_on_one_storage() -> None:
    # KubeRay's RayServiceUpgradeType: "NewCluster" (the default) starts a second cluster,
    # and so a second registry on the same storage; "None" updates in place. The CRD types
    # the field as a plain string, so a misspelling would be taken as the default.
    strategy = service()["spec"].get("upgradeStrategy", {})
    assert strategy.get("type") == "None", strategy


def test_ray_dashboard_and_client_need_a_token() -> None:
    cluster = ray_cluster()
    assert cluster.get("authOptions", {}).get("mode") == "token"
    assert tuple(map(int, cluster["rayVersion"].split(".")[:2])) >= RAY_TOKEN_AUTH
    head = cluster["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)


def test_output_links_name_the_public_address_not_the_bind_address() -> None:
    for group in groups():
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env["RAYBEAM_HTTP_HOST"] == "0.0.0.0"
            assert env["RAYBEAM_PUBLIC_URL"].startswith(("http://", "https://"))
            assert "0.0.0.0" not in env["RAYBEAM_PUBLIC_URL"]


def test_every_pod_takes_auth_tokens_from_a_required_secret() -> None:
    for group in groups():
        for container in group["template"]["spec"]["containers"]:
            env = {item["name"]: item for item in container.get("env", [])}
            ref = env["RAYBEAM_AUTH_TOKENS"]["valueFrom"]["secretKeyRef"]
            assert not ref.get("optional", False)
            assert "value" not in env["RAYBEAM_AUTH_TOKENS"]
    assert "CHANGE-ME" not in RAYSERVICE.read_text()


def test_every_pod_reaches_the_shared_storage() -> None:
    for group in groups():
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env["RAYBEAM_STORAGE"] == "s3://YOUR-BUCKET/raybeam"


# ---- the image ---------------------------------------------------------------------------


def test_every_pod_runs_the_image_built_from_the_checkout() -> None:
    images = {c["image"] for g in groups() for c in g["template"]["spec"]["containers"]}
    (image,) = images
    assert not image.startswith("rayproject/"), (
        "the stock Ray image has neither raybeam nor the queues"
    )
    assert ray_cluster()["rayVersion"] == ray.__version__
    base = dockerfile_args(dockerfile_instructions(DOCKERFILE))["RAY_IMAGE"]
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py3")


def test_dockerfile_builds_on_this_rays_image_and_installs_the_checkout() -> None:
    pairs = dockerfile_instructions(DOCKERFILE)
    args = dockerfile_args(pairs)
    (from_,) = [rest for word, rest in pairs if word == "FROM"]
    assert from_ == "${RAY_IMAGE}"
    assert args["RAY_IMAGE"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    copies = dockerfile_copies(pairs)
    for sources, _ in copies:
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the checkout"
    runs = [rest for word, rest in pairs if word == "RUN"]
    targets = [t for run in runs for t in pip_install_targets(run)]
    assert "raybeam" not in index_packages(targets)
    assert "/home/ray/raybeam" in targets
    # What the wheel build reads must be in the image: pyproject, its readme, its packages.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for needed in ["pyproject.toml", project["project"]["readme"], *packages]:
        assert image_path_in_repo(f"/home/ray/raybeam/{needed}", copies) == REPO / needed


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in ignored and ".git" in ignored
    for sources, _ in dockerfile_copies(dockerfile_instructions(DOCKERFILE)):
        for source in sources:
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


# ---- the autoscaler's node types ---------------------------------------------------------


def test_autoscaler_derives_a_cpu_head_a_cpu_group_and_an_a10g_group() -> None:
    config = autoscaling_config()
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert "GPU" not in types["cpu"]["resources"]
    assert types["cpu"]["min_workers"] == 0
    gpu = types["gpu-a10g"]["resources"]
    assert gpu["GPU"] == 1
    assert gpu[f"accelerator_type:{accelerators.NVIDIA_TESLA_A10G}"] == 1
    assert types["gpu-a10g"]["min_workers"] == 0


def test_cpu_tasks_start_cpu_pods_only() -> None:
    demand = task_demand(example_queues()["word_count"])
    to_launch, unmet = nodes_to_launch(autoscaling_config(), [demand] * 6)
    assert unmet == []
    assert set(to_launch) == {"cpu"}, to_launch


def test_a10g_tasks_start_an_a10g_pod() -> None:
    demand = task_demand(example_queues()["gpu_check"])
    to_launch, unmet = nodes_to_launch(autoscaling_config(), [demand])
    assert unmet == []
    assert to_launch == {"gpu-a10g": 1}


def test_gpu_group_start_params_parse_like_ray_start() -> None:
    (_, gpu) = ray_cluster()["workerGroupSpecs"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # KubeRay turns each rayStartParams entry into `--key=value` on a shell line.
    start_params = gpu["rayStartParams"]
    line = "ray start --address=head:6379 " + " ".join(
        f"--{key}={value}" for key, value in start_params.items()
    )
    params = ray_start_params(line)
    assert json.loads(params["resources"]) == {
        f"accelerator_type:{accelerators.NVIDIA_TESLA_A10G}": 1
    }


# ---- serveConfigV2 -----------------------------------------------------------------------


def test_serve_config_validates_with_serve_schema() -> None:
    raw = serve_config()
    config = ServeDeploySchema.model_validate(raw)
    # The models ignore unknown keys, so a misspelt key would pass silently.
    assert set(raw) <= set(ServeDeploySchema.model_fields)
    assert set(raw["http_options"]) <= set(HTTPOptionsSchema.model_fields)
    for app in raw["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields)
    assert config.http_options.host == "0.0.0.0"
    assert config.http_options.port == 8000
    (app,) = config.applications
    assert app.route_prefix == "/"
    # Serve fetches a runtime_env's pip packages from an index at deploy time.
    assert "pip" not in (app.runtime_env or {})


def test_serve_import_path_builds_the_api_with_the_image_queues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (app,) = ServeDeploySchema.model_validate(serve_config()).applications
    builder = import_attr(app.import_path)  # what Serve's controller resolves
    # The queue file named in args is the one the Dockerfile puts into the image.
    copies = dockerfile_copies(dockerfile_instructions(DOCKERFILE))
    args = dict(app.args)
    local = image_path_in_repo(args["app"], copies)
    assert local.is_file(), local
    args["app"] = str(local)

    registered: list[str] = []
    monkeypatch.setattr(TaskQueue, "register", lambda self: registered.append(self.name))
    monkeypatch.setattr(connection, "ensure_ray", lambda: None)
    pod_env = {
        e["name"]: e["value"]
        for e in ray_cluster()["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    for name, value in {**pod_env, "RAYBEAM_AUTH_TOKENS": "a-secret-from-kubernetes"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, local.stem, None)

    built = call_user_app_builder_with_args_if_necessary(builder, args)

    assert isinstance(built, Application)
    assert set(registered) == set(example_queues())
