"""Run quickstart.ipynb top to bottom on the default local Ray and store the executed copy.

    .venv/bin/pip install -e ".[dev,notebook]"
    .venv/bin/python notebooks/execute.py

The stored copy is what the repository shows on the web, so it keeps every output and the
progress bar's widget state (`metadata.widgets`), from which Jupyter, VS Code and nbviewer
draw the finished bar. Renderers that run no widget code (GitHub's) show a widget's
`text/plain` instead, which tqdm wrote when the bar was still empty; it is rewritten from
the stored final state, so those renderers show the bar as it ended.
"""

from __future__ import annotations

import html
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().with_name("quickstart.ipynb")
KERNEL = "raybeam-notebook-python"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
#: how users' Jupyter finds a kernel for the stored copy
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
BAR_WIDTH = 10  # tqdm's text bar without a terminal width


def this_interpreter(folder: Path) -> AsyncKernelManager:
    """A kernel manager whose only kernelspec runs this interpreter (the venv's)."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "raybeam", "language": "python"})
    )
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")])
    return AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def _text(value: str) -> str:
    # tqdm pads its HTML with figure spaces (and browsers' &nbsp;)
    return html.unescape(value).replace("\u2007", " ").replace("\xa0", " ")


def progress_text(model_id: str, state: dict[str, Any]) -> str | None:
    """tqdm's text form of the bar a widget shows, from the widget's stored state."""
    box = state.get(model_id, {})
    if box.get("model_name") != "HBoxModel":
        return None
    children = [state.get(c.removeprefix("IPY_MODEL_"), {}) for c in box["state"]["children"]]
    names = [c.get("model_name") for c in children]
    if names != ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
        return None
    left, progress, right = (c["state"] for c in children)
    done = progress.get("value", 0) / (progress.get("max") or 1)
    filled = min(BAR_WIDTH, round(BAR_WIDTH * done))
    bar = "█" * filled + " " * (BAR_WIDTH - filled)
    return f"{_text(left.get('value', ''))}|{bar}|{_text(right.get('value', ''))}"


def refresh_widget_text(nb: Any) -> int:
    """Rewrite each progress widget's text/plain from its final state; returns how many."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    count = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            text = progress_text(view["model_id"], state) if view else None
            if text is not None:
                output["data"]["text/plain"] = text
                count += 1
    return count


def main() -> int:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # the default local Ray, as the notebook's first cell says
    with tempfile.TemporaryDirectory(prefix="rb-nb-") as folder:
        client = NotebookClient(
            nb,
            km=this_interpreter(Path(folder)),
            timeout=300,
            store_widget_state=True,
            resources={"metadata": {"path": folder}},
        )
        client.execute(env=env)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    if errors:
        print(f"{len(errors)} cells raised; not storing the copy", file=sys.stderr)
        return 1
    bars = refresh_widget_text(nb)
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.validate(nb)
    nbformat.write(nb, NOTEBOOK)
    print(f"stored {NOTEBOOK.name}: {len(nb.cells)} cells, {bars} progress widget(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
