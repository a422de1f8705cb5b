"""Outputs and registry state on S3 (moto's server at AWS_ENDPOINT_URL_S3; RAYBEAM_STORAGE an
s3:// URL): a task saves a file, a folder and bytes; each is downloaded by its presigned URL."""

from __future__ import annotations

import io
import os
import random
import zipfile
from pathlib import Path

import httpx
from _cluster import start_local_ray

import raybeam
from raybeam import Output, task_queue

assert raybeam.settings().storage_url.startswith("s3://")
endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
start_local_ray(num_cpus=1)


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@task_queue(name="s3q", cpu=1, retries=0)
def save() -> str:
    # over one 8 MiB part, so the file goes up as a multipart upload
    Path("a.txt").write_bytes(content(1, 9 * 2**20 + 123))
    Output(path="a.txt").save()
    Path("folder/sub").mkdir(parents=True)
    Path("folder/sub/b.txt").write_text("in a folder")
    Output(path="folder").save()
    return Output.from_bytes("data.bin", content(2, 1000)).save().public_url(expires=120)


task = save.put()
inside_link = task.result(timeout=90)
print("task", task.id)
expected = {"a.txt": content(1, 9 * 2**20 + 123), "data.bin": content(2, 1000)}
outputs = task.outputs()
assert [o["name"] for o in outputs] == ["a.txt", "folder.zip", "data.bin"], outputs
with httpx.Client(trust_env=False, timeout=60) as http:
    for output in [*outputs, {"name": "data.bin", "url": inside_link, "expires_in": 120}]:
        url = output["url"]
        assert url.startswith(endpoint), url
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url, url
        assert f"X-Amz-Expires={output['expires_in']}" in url, url
        got = http.get(url)
        assert got.status_code == 200, (url, got.status_code, got.text[:300])
        if output["name"] == "folder.zip":
            with zipfile.ZipFile(io.BytesIO(got.content)) as zf:
                assert zf.namelist() == ["sub/b.txt"], zf.namelist()
                assert zf.read("sub/b.txt") == b"in a folder"
        else:
            assert got.content == expected[output["name"]], output["name"]
print(f"downloaded {len(outputs)} outputs")
