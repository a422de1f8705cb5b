"""Pure mapping from decorator parameters to Ray task options (no Ray calls here)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from raybeam.errors import InvalidConfiguration
from raybeam.image import Image

GPU_TYPES = ("T4", "L4", "A10G", "A100", "H100", "H200")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?[bB]?\s*$")
_UNITS = {
    None: 2**20,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def memory_bytes(memory: int | float | str) -> int:
    """Memory in bytes from MiB (a number) or a string such as "512Mi", "2Gi", "1G".

    >>> memory_bytes(128), memory_bytes("2Gi")
    (134217728, 2147483648)
    """
    if isinstance(memory, bool):
        raise InvalidConfiguration(f"memory must be MiB or a string like '2Gi', got {memory!r}")
    if isinstance(memory, (int, float)):
        value, unit = float(memory), None
    else:
        match = _MEMORY.match(str(memory))
        if match is None:
            raise InvalidConfiguration(
                f"memory {memory!r} is not understood; give MiB as a number or a string "
                "such as '512Mi', '2Gi' or '1G'"
            )
        value, unit = float(match.group(1)), match.group(2)
    if value <= 0 or not math.isfinite(value):
        raise InvalidConfiguration(f"memory must be above 0, got {memory!r}")
    return int(value * _UNITS[unit])


def gpu_types(gpu: str | Sequence[str] | None) -> list[str]:
    """The ordered list of acceptable GPU types; ["any"] for any type, [] for no GPU."""
    if gpu is None:
        return []
    types = [gpu] if isinstance(gpu, str) else list(gpu)
    if not types:
        raise InvalidConfiguration("gpu=[] names no GPU type; leave gpu=None for CPU tasks")
    known = {t.upper(): t for t in GPU_TYPES}
    out = []
    for t in types:
        if not isinstance(t, str) or not t.strip():
            raise InvalidConfiguration(f"gpu types must be names such as 'A10G', got {t!r}")
        if t.lower() == "any":
            out.append("any")
        else:
            # unknown names pass through: a cluster may declare its own accelerator_type:<X>
            out.append(known.get(t.upper(), t))
    return out


def ray_options(
    *,
    cpu: float = 1.0,
    memory: int | float | str = 128,
    gpu: str | Sequence[str] | None = None,
    gpu_count: float | None = None,
    image: Image | None = None,
) -> dict[str, Any]:
    """Ray task options for a queue; the GPU type is chosen per submission by `pick_gpu_type`."""
    if not isinstance(cpu, (int, float)) or isinstance(cpu, bool) or cpu < 0:
        raise InvalidConfiguration(f"cpu must be a number of CPUs >= 0, got {cpu!r}")
    types = gpu_types(gpu)
    count = gpu_count if gpu_count is not None else (1 if types else 0)
    if not isinstance(count, (int, float)) or count < 0:
        raise InvalidConfiguration(f"gpu_count must be a number >= 0, got {gpu_count!r}")
    if count and not types:
        types = ["any"]
    options: dict[str, Any] = {
        "num_cpus": float(cpu),
        "memory": memory_bytes(memory),
        "num_gpus": count,
    }
    env = image.runtime_env() if image is not None else {}
    if env:
        options["runtime_env"] = env
    return options


def pick_gpu_type(types: Sequence[str], cluster_resources: Mapping[str, float]) -> str | None:
    """The first type in preference order that some node declares; else the first type.

    A type no node has keeps the task pending (and asks an autoscaler for it) instead of
    failing, as a hosted queue waits for capacity.
    """
    concrete = [t for t in types if t != "any"]
    if not concrete or "any" in types[:1]:
        return None
    for t in types:
        if t == "any":
            return None
        if cluster_resources.get(f"accelerator_type:{t}", 0) > 0:
            return t
    return concrete[0]
