"""`Image`: the Python packages and environment a queue's tasks run with."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Image:
    """Packages and environment variables for a queue's workers, as a Ray `runtime_env`.

    >>> Image(python_packages=["numpy==2.1.0"], env_vars={"HF_HOME": "/data/hf"}).runtime_env()
    {'pip': ['numpy==2.1.0'], 'env_vars': {'HF_HOME': '/data/hf'}}
    """

    python_packages: list[str] = dataclasses.field(default_factory=list)
    env_vars: dict[str, str] = dataclasses.field(default_factory=dict)

    def runtime_env(self) -> dict[str, Any]:
        env: dict[str, Any] = {}
        if self.python_packages:
            env["pip"] = list(self.python_packages)
        if self.env_vars:
            env["env_vars"] = {str(k): str(v) for k, v in self.env_vars.items()}
        return env
