"""What Ray's and KubeRay's own code make of the files in cluster/, for offline checks.

Each helper runs the code that `ray up`, Ray's autoscaler or the Kubernetes API server
would run on the file, short of calling a cloud: Ray's CLI parses the `ray start` lines,
Ray's scheduler picks node types for the demand raybeam's queues create, and the KubeRay
CRDs validate manifests with unknown fields rejected, as `kubectl --validate=strict` does.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from ray._common.utils import resources_from_ray_options
from ray.autoscaler._private.node_provider_availability_tracker import (
    NodeAvailabilitySummary,
)
from ray.autoscaler._private.resource_demand_scheduler import ResourceDemandScheduler
from ray.autoscaler._private.util import NodeType
from ray.autoscaler.node_provider import NodeProvider
from ray.autoscaler.tags import NODE_KIND_HEAD, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE
from ray.scripts.scripts import start as ray_start_cli

from raybeam.cli import find_queues
from raybeam.queue import TaskQueue
from raybeam.resources import pick_gpu_type

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
#: KubeRay's CRDs (Apache-2.0, see its LICENSE there), vendored so a fresh clone has them
KUBERAY_CRDS = REPO / "tests" / "data" / "kuberay"
HEAD_IP = "10.0.0.1"


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_Loader)
    assert isinstance(data, dict), path
    return data


def load_documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in docs), path
    return docs


# ---- shell lines -------------------------------------------------------------------------


def ray_start_params(command: str) -> dict[str, Any]:
    """Parse the `ray start` in a shell command line with Ray's own CLI definition."""
    argv = shlex.split(command)
    args = argv[argv.index("start", argv.index("ray")) + 1 :]
    with ray_start_cli.make_context("start", args) as ctx:
        return dict(ctx.params)


def ray_start_command(commands: list[str]) -> str:
    (command,) = [c for c in commands if "ray start" in c]
    return command


_SHELL_BREAKS = {"&&", "||", ";", "|", ")", "("}
_PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url"}


def pip_install_targets(command: str) -> list[str]:
    """What each `pip install` in a shell line (or Dockerfile RUN) installs: requirements,
    paths (`-e path` included), files given to `-r`."""
    words = shlex.split(command.replace(";", " ; "), comments=False)
    targets: list[str] = []
    for i, word in enumerate(words):
        if not (word.endswith("pip") and i + 1 < len(words) and words[i + 1] == "install"):
            continue
        rest = iter(words[i + 2 :])
        for arg in rest:
            if arg in _SHELL_BREAKS or arg.endswith(";"):
                break
            if arg in ("-e", "--editable") or arg in _PIP_VALUE_OPTIONS:
                targets.append(next(rest))
            elif not arg.startswith("-"):
                targets.append(arg)
    return targets


def index_packages(targets: list[str]) -> set[str]:
    """The names among pip targets that pip would fetch from a package index."""
    names = set()
    for target in targets:
        if target.startswith(("/", "~", ".", "$")) or "/" in target.split("[")[0]:
            continue  # a path on the machine
        try:
            names.add(Requirement(target).name.lower())
        except InvalidRequirement:
            continue
    return names


# ---- raybeam's demand and Ray's scheduler --------------------------------------------------


def load_queues(path: Path) -> list[TaskQueue[Any, Any]]:
    """The queues of an app file, found the way `raybeam serve` finds them."""
    name = f"cluster_app_{abs(hash(path))}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return find_queues(module)


def task_demand(queue: TaskQueue[Any, Any]) -> dict[str, float]:
    """The resources Ray asks the autoscaler for, for one task of this queue submitted to a
    cluster where no node of its GPU type exists yet (the scale-from-zero case)."""
    spec = queue.definition()[0]["spec"]
    options = dict(spec["ray_options"])
    gpu_type = pick_gpu_type(spec["gpu_types"], {}) if spec["gpu_types"] else None
    if gpu_type is not None:
        options["accelerator_type"] = gpu_type
    options.pop("runtime_env", None)
    return {k: float(v) for k, v in resources_from_ray_options(options).items() if v}


class _HeadOnly(NodeProvider):
    """A cluster of one running head node, as the autoscaler sees it before any worker."""

    def __init__(self, head_type: str) -> None:
        super().__init__({}, "raybeam")
        self.head_type = head_type

    def non_terminated_nodes(self, tag_filters: dict[str, str]) -> list[str]:
        return ["head"]

    def node_tags(self, node_id: str) -> dict[str, str]:
        return {TAG_RAY_NODE_KIND: NODE_KIND_HEAD, TAG_RAY_USER_NODE_TYPE: self.head_type}

    def internal_ip(self, node_id: str) -> str:
        return HEAD_IP


def nodes_to_launch(
    config: dict[str, Any], demands: list[dict[str, float]]
) -> tuple[dict[NodeType, int], list[dict[str, float]]]:
    """Ray's autoscaler's answer to `demands` on a cluster with only its idle head: the node
    types to launch, and what no node type can run."""
    node_types = copy.deepcopy(config["available_node_types"])
    head_type = config["head_node_type"]
    head = node_types[head_type]["resources"]
    scheduler = ResourceDemandScheduler(
        _HeadOnly(head_type),
        node_types,
        max_workers=config["max_workers"],
        head_node_type=head_type,
        upscaling_speed=config.get("upscaling_speed", 1.0),
    )
    to_launch, unfulfilled = scheduler.get_nodes_to_launch(
        nodes=["head"],
        launching_nodes={},
        resource_demands=demands,
        unused_resources_by_ip={HEAD_IP: dict(head)},
        pending_placement_groups=[],
        max_resources_by_ip={HEAD_IP: dict(head)},
        ensure_min_cluster_size=[],
        node_availability_summary=NodeAvailabilitySummary(node_availabilities={}),
    )
    return dict(to_launch), unfulfilled


# ---- KubeRay's CRDs, strictly ---------------------------------------------------------------

_OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name"],
}


def _strict(node: Any) -> Any:
    """An openAPIV3Schema as a JSON Schema that rejects what the API server would prune."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    elif node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def crd_schema(crd_file: str, version: str = "v1") -> dict[str, Any]:
    crd = load_yaml(KUBERAY_CRDS / crd_file)
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(entry["schema"]["openAPIV3Schema"])
    raw_lists = _list_maps(schema, "")
    strict = _strict(schema)
    strict["properties"]["metadata"] = _OBJECT_META
    strict["required"] = sorted({*strict.get("required", []), "apiVersion", "kind", "spec"})
    return {"schema": strict, "list_maps": raw_lists}


def _list_maps(node: Any, path: str) -> dict[str, list[str]]:
    """Paths (with [] for list items) of `x-kubernetes-list-type: map` lists, and their keys."""
    found: dict[str, list[str]] = {}
    if not isinstance(node, dict):
        return found
    if node.get("x-kubernetes-list-type") == "map":
        found[path] = node.get("x-kubernetes-list-map-keys", [])
    for key, child in node.get("properties", {}).items():
        found.update(_list_maps(child, f"{path}.{key}"))
    if "items" in node:
        found.update(_list_maps(node["items"], f"{path}[]"))
    return found


def duplicate_list_map_keys(manifest: Any, list_maps: dict[str, list[str]]) -> list[str]:
    """Entries of keyed lists (env, ports, ...) that share a key: the API server refuses them."""
    problems: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, f"{path}.{key}")
        elif isinstance(value, list):
            keys = list_maps.get(path)
            if keys:
                seen = [tuple(item.get(k) for k in keys) for item in value]
                problems.extend(f"{path}: {k}" for k in {k for k in seen if seen.count(k) > 1})
            for item in value:
                walk(item, f"{path}[]")

    walk(manifest, "")
    return problems


def kuberay_manifest_errors(manifest: dict[str, Any], crd_file: str) -> list[str]:
    import jsonschema

    crd = crd_schema(crd_file)
    validator = jsonschema.Draft202012Validator(crd["schema"])
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
    return errors + duplicate_list_map_keys(manifest, crd["list_maps"])


# ---- the Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def dockerfile_args(pairs: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for word, rest in pairs:
        if word == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def dockerfile_copies(pairs: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """Each COPY's sources (in the build context) and destination, with ARG defaults."""
    args = dockerfile_args(pairs)
    copies = []
    for word, rest in pairs:
        if word == "COPY":
            parts = [p for p in shlex.split(expand(rest, args)) if not p.startswith("--")]
            copies.append((parts[:-1], parts[-1]))
    return copies


def image_path_in_repo(path: str, copies: list[tuple[list[str], str]]) -> Path:
    """The checkout file that the image holds at `path`, from the Dockerfile's COPYs."""
    for sources, dest in copies:
        for source in sources:
            target = dest.rstrip("/")
            if dest.endswith("/"):
                target = f"{target}/{Path(source).name}"
            if path == target or path.startswith(target + "/"):
                return REPO / source / path[len(target) :].lstrip("/")
    raise AssertionError(f"nothing in the Dockerfile copies {path} into the image")
