"""notebooks/quickstart.ipynb, executed top to bottom with nbclient on the session's Ray cluster.

The kernel is a separate process: it joins the session cluster through `RAY_ADDRESS` and uses
the same storage. It runs this interpreter (the venv's) through a kernelspec written for the
test, so a `python3` kernelspec installed elsewhere on the machine is never picked up.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "raybeam-test-python"
WIDGET = "application/vnd.jupyter.widget-view+json"
SIZES = [64, 16, 32, 48, 96]  # the .put() task first, then the .map() ones


def venv_kernel(folder: Path) -> AsyncKernelManager:
    """A kernel manager whose only kernelspec runs this interpreter."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "raybeam test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")])
    return AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def tagged(nb: Any, tag: str) -> list[dict[str, Any]]:
    [cell] = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    outputs: list[dict[str, Any]] = cell.outputs
    return outputs


def text_of(outputs: list[dict[str, Any]]) -> str:
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_quickstart_runs_top_to_bottom(ray_cluster: Any, tmp_path: Path) -> None:
    from PIL import Image

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # os.environ already carries what joining needs (RAY_AUTH_MODE and friends after ray.init)
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address, RAYBEAM_STORAGE=ray_cluster.storage)
    client = NotebookClient(
        nb,
        km=venv_kernel(tmp_path),
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)

    for cell in nb.cells:
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o["output_type"] == "error"]
            assert not errors, f"{cell.source[:60]!r} raised: {errors}"

    [put] = [o for o in tagged(nb, "put") if o["output_type"] == "execute_result"]
    task_id = put["data"]["text/plain"].strip("'")
    assert f"Enqueued task: {task_id}" in text_of(tagged(nb, "put"))

    progress = tagged(nb, "progress")
    widget = any(WIDGET in o.get("data", {}) for o in progress)  # with ipywidgets installed
    assert widget or re.search(r"tasks: 100%.*5/5", text_of(progress)), progress

    [table] = [o["data"]["text/html"] for o in tagged(nb, "table") if "data" in o]
    rows = re.findall(r"<tr>(.*?)</tr>", table)[1:]
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows]
    ids = [c[0] for c in cells]
    assert ids[0] == task_id and len(set(ids)) == len(SIZES)
    assert [c[1:4] for c in cells] == [["COMPLETE", str(s), str(s * s)] for s in SIZES]

    [png] = [
        o["data"]["image/png"] for o in tagged(nb, "image") if "image/png" in o.get("data", {})
    ]
    with Image.open(io.BytesIO(base64.b64decode(png))) as image:
        assert (image.format, image.size) == ("PNG", (64, 64))

    printed = text_of(tagged(nb, "record"))  # Ray may log to the kernel's streams too
    record = json.loads(printed[printed.index("{") : printed.rindex("}") + 1])
    assert (record["id"], record["status"], record["result"]["size"]) == (task_id, "COMPLETE", 64)
    assert [o["name"] for o in record["outputs"]] == ["image.png"]

    cancelled = text_of(tagged(nb, "cancel"))
    assert re.search(r"^\S+ CANCELLED$", cancelled, re.MULTILINE), cancelled
    assert "result() raised TaskCancelled" in cancelled
