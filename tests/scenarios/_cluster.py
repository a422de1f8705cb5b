"""Shared start-up for scenario scripts: a private local Ray on loopback."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def start_local_ray(**kwargs: Any) -> None:
    import ray

    # The test removes this folder once the scenario's processes are gone.
    temp = tempfile.mkdtemp(prefix="ray-", dir=os.environ["RB_SCENARIO_TMP"])
    ray.init(include_dashboard=False, logging_level=logging.ERROR, _temp_dir=temp, **kwargs)
