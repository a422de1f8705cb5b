"""notebooks/quickstart.ipynb: its stored executed copy, and a fresh run top to bottom.

The repository holds the notebook executed (by notebooks/execute.py), so that it reads on the
web with its outputs: the checks of that copy need no Ray. The run executes it again with
nbclient on the session's Ray cluster. The kernel is a separate process: it joins the session
cluster through `RAY_ADDRESS` and uses the same storage. It runs this interpreter (the
venv's) through a kernelspec written for the test, so a `python3` kernelspec installed
elsewhere on the machine is never picked up.
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata
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
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "raybeam-test-python"
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
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


def table_rows(html: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", html)[1:]
    return [re.findall(r"<td>(.*?)</td>", row) for row in rows]


def png_size(data: str) -> tuple[str | None, tuple[int, int]]:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return image.format, image.size


def test_stored_copy_was_run_top_to_bottom_without_errors() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # One fresh run in order (not cells run by hand out of order, nor a cell left unrun).
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    for cell in code:
        assert not [o for o in cell.outputs if o["output_type"] == "error"], cell.source[:60]
    # Readers' Jupyter picks its own Python kernel, not the one the copy was made with.
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_stored_copy_shows_the_progress_bar_table_and_image_on_the_web() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)

    # The bar: a widget whose final state is stored (Jupyter, VS Code and nbviewer draw it
    # from that), with a text form of the finished bar for renderers that draw no widgets.
    [bar] = [o["data"] for o in tagged(nb, "progress") if WIDGET in o.get("data", {})]
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    assert bar[WIDGET]["model_id"] in state
    assert re.match(r"tasks: 100%\|█+\| 5/5 ", bar["text/plain"]), bar["text/plain"]

    [table] = [o["data"]["text/html"] for o in tagged(nb, "table") if "data" in o]
    cells = table_rows(table)
    assert [c[1:4] for c in cells] == [["COMPLETE", str(s), str(s * s)] for s in SIZES]

    [png] = [o["data"]["image/png"] for o in tagged(nb, "image") if "data" in o]
    assert png_size(png) == ("PNG", (64, 64))


def test_notebook_extra_installs_what_the_notebook_imports() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extra = {Requirement(r).name.lower() for r in project["optional-dependencies"]["notebook"]}
    base = {Requirement(r).name.lower() for r in project["dependencies"]}
    # raybeam.wait draws its bar as a widget only with ipywidgets; Jupyter needs a kernel.
    assert {"ipywidgets", "ipykernel"} <= extra
    brought = {
        Requirement(r).name.lower()
        for name in extra
        for r in importlib.metadata.requires(name) or []
        if "extra ==" not in r
    }
    nb = nbformat.read(NOTEBOOK, as_version=4)
    modules = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Import):
                    modules |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(modules - set(sys.stdlib_module_names) - {"raybeam"}):
        names = {d.lower() for d in distributions.get(module, [module])}
        assert names & (extra | base | brought), f"{module} ({names}) is not in the notebook extra"


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_quickstart_runs_top_to_bottom(ray_cluster: Any, tmp_path: Path) -> None:
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
    cells = table_rows(table)
    ids = [c[0] for c in cells]
    assert ids[0] == task_id and len(set(ids)) == len(SIZES)
    assert [c[1:4] for c in cells] == [["COMPLETE", str(s), str(s * s)] for s in SIZES]

    [png] = [
        o["data"]["image/png"] for o in tagged(nb, "image") if "image/png" in o.get("data", {})
    ]
    assert png_size(png) == ("PNG", (64, 64))

    printed = text_of(tagged(nb, "record"))  # Ray may log to the kernel's streams too
    record = json.loads(printed[printed.index("{") : printed.rindex("}") + 1])
    assert (record["id"], record["status"], record["result"]["size"]) == (task_id, "COMPLETE", 64)
    assert [o["name"] for o in record["outputs"]] == ["image.png"]

    cancelled = text_of(tagged(nb, "cancel"))
    assert re.search(r"^\S+ CANCELLED$", cancelled, re.MULTILINE), cancelled
    assert "result() raised TaskCancelled" in cancelled
