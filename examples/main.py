"""The main job: a local Ray, a queue, tasks enqueued over Python and HTTP, results and links."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request

import raybeam
from raybeam import Output, TaskContext, task_queue


@task_queue(cpu=0.5, memory="256Mi", retries=2)
def word_stats(text: str, context: TaskContext | None = None) -> dict[str, object]:
    """Count the words of a text and save a report file as an output."""
    words = text.split()
    with open("report.txt", "w") as f:
        f.write(f"{len(words)} words, longest: {max(words, key=len)}\n")
    Output(path="report.txt").save()
    return {"words": len(words), "attempt": context.attempt if context else 0}


def main() -> None:
    os.environ.setdefault("RAYBEAM_STORAGE", os.path.join(tempfile.gettempdir(), "raybeam-demo"))
    token = os.environ.setdefault("RAYBEAM_AUTH_TOKENS", "demo-token").split(",")[0]
    texts = ["the quick brown fox", "jumps over the lazy dog", "raybeam runs on ray"]

    task = word_stats.put(text="hello from python")
    print("result:", task.result(timeout=120))
    tasks = word_stats.map([{"text": t} for t in texts])
    raybeam.wait(tasks, progress=True, timeout=120)
    for t in tasks:
        print(f"{t.id}  {t.status().value:<8}  {t.result()}")

    output = task.outputs()[0]
    print(f"output {output.name}: {output.url} (expires in {output.expires_in} s)")

    try:
        from serve_app.deployment import deploy
    except ImportError:
        return
    base = deploy(blocking=False)
    request = urllib.request.Request(
        f"{base}/taskqueue/word_stats",
        data=json.dumps({"text": "hello over http"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        task_id = json.load(response)["task_id"]
    print("enqueued over HTTP:", task_id)
    http_task = raybeam.get_task(task_id)
    print("result:", http_task.result(timeout=120))
    link = http_task.outputs()[0].url
    with urllib.request.urlopen(link, timeout=30) as response:
        print(f"downloaded {link.split('?')[0]}: {response.read().decode().strip()!r}")


if __name__ == "__main__":
    main()
