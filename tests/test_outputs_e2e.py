"""Outputs saved inside real tasks on the session's Ray cluster (SPEC §1, §3, §5).

Local storage here is the session's RAYBEAM_STORAGE folder. Local links are checked as the
HTTP API's `/output/id/{output_id}` route checks them (`verify_local_link`, then the file
through the Storage); that route itself is tested over HTTP in test_http.py. S3 runs end to
end in a scenario with its own Ray, against moto's server: see `test_s3_outputs_and_journal`.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest.mock import ANY
from urllib.parse import parse_qs

import pytest
from PIL import Image

import raybeam
from raybeam import InvalidOutputPath, Output, OutsideTask, TaskFailed, task_queue
from raybeam.storage import Storage
from tests.support import scenarios
from tests.support.moto_server import AWS_ENV, create_bucket, moto_s3, s3_client

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]

LINK = re.compile(r"(?P<base>https?://[^/]+)/output/id/(?P<id>[0-9a-f]{32})\?(?P<query>.+)")
PIXELS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


@dataclass
class Local:
    """A local link taken apart: output id, expiry (unix seconds), signature."""

    id: str
    expires: int
    signature: str


def parse_link(url: str) -> Local:
    match = LINK.fullmatch(url)
    assert match, url
    query = {k: v[0] for k, v in parse_qs(match["query"]).items()}
    assert set(query) == {"expires", "signature"}, url
    return Local(match["id"], int(query["expires"]), query["signature"])


def read_output(storage: Storage, output_id: str) -> tuple[str, bytes]:
    """What `/output/id/{output_id}` serves: the stored key and its bytes."""
    key = storage.find_output(output_id)
    assert key is not None, output_id
    with storage.open(key) as f:
        data: bytes = f.read()
    return key, data


@dataclass
class Saved:
    task: raybeam.Task
    queue: str
    blob: bytes
    result: dict[str, Any]


@pytest.fixture(scope="module")
def saved(ray_cluster: Any) -> Saved:
    """One real task that saves a file, a folder, bytes and a Pillow image."""
    name = "out_" + uuid.uuid4().hex[:10]

    @task_queue(name=name, cpu=0.5, retries=0)
    def save_all(blob: bytes) -> dict[str, Any]:
        from PIL import Image

        Path("sum.txt").write_text("20")
        Output(path="sum.txt").save()
        Path("plots/deep").mkdir(parents=True)
        Path("plots/a.csv").write_text("x,y\n1,2\n")
        Path("plots/deep/b.txt").write_bytes(b"\x00\x01binary")
        Output(path="plots").save()
        data = Output.from_bytes("data.bin", blob).save()
        image = Image.new("RGB", (2, 2))
        image.putdata(PIXELS)
        Output.from_pil_image(image).save()
        return {"cwd": os.getcwd(), "link": data.public_url(expires=60), "at": time.time()}

    blob = os.urandom(300_000)
    task = save_all.put(blob)
    return Saved(task, name, blob, task.result(timeout=60))


def test_file_folder_bytes_and_image_are_listed_and_stored(saved: Saved, ray_cluster: Any) -> None:
    storage = Storage(ray_cluster.storage)
    outputs = saved.task.outputs()
    assert [o.name for o in outputs] == ["sum.txt", "plots.zip", "data.bin", "image.png"]
    assert saved.task.info()["outputs"][0] == {**outputs[0], "url": ANY}  # still plain dicts
    contents = {}
    for output in outputs:
        assert isinstance(output, raybeam.OutputFile)
        assert set(output) == {"name", "url", "expires_in"}  # it reads as the record's dict
        assert output.expires_in == output["expires_in"] == 3600
        link = parse_link(output.url)
        assert abs(link.expires - (time.time() + 3600)) < 30
        assert storage.verify_local_link(link.id, str(link.expires), link.signature)
        key, contents[output.name] = read_output(storage, link.id)
        assert key == f"outputs/{saved.queue}/{saved.task.id}/{link.id}/{output.name}"
        assert (Path(ray_cluster.storage) / key).is_file()

    assert contents["sum.txt"] == b"20"
    assert contents["data.bin"] == saved.blob
    with zipfile.ZipFile(io.BytesIO(contents["plots.zip"])) as zf:
        assert sorted(zf.namelist()) == ["a.csv", "deep/b.txt"]
        assert zf.read("a.csv") == b"x,y\n1,2\n"
        assert zf.read("deep/b.txt") == b"\x00\x01binary"
    with Image.open(io.BytesIO(contents["image.png"])) as image:
        assert image.format == "PNG"
        assert list(image.convert("RGB").getdata()) == PIXELS
    # the scratch folder the task ran in is gone
    assert not Path(saved.result["cwd"]).exists()


def test_open_output_reads_from_storage(saved: Saved) -> None:
    with saved.task.open_output("data.bin") as f:
        assert f.read() == saved.blob
    with saved.task.open_output() as f:  # the first output
        assert f.read() == b"20"
    with pytest.raises(InvalidOutputPath, match=r"no output named 'nope'"):
        saved.task.open_output("nope")


def test_links_are_signed_afresh_on_every_read(saved: Saved, ray_cluster: Any) -> None:
    storage = Storage(ray_cluster.storage)
    first = [parse_link(o.url) for o in saved.task.outputs()]
    time.sleep(1.1)
    second = [parse_link(o["url"]) for o in saved.task.info()["outputs"]]
    for a, b in zip(first, second, strict=True):
        assert a.id == b.id
        assert b.expires > a.expires
        assert a.signature != b.signature
        for link in (a, b):
            assert storage.verify_local_link(link.id, str(link.expires), link.signature)
        assert not storage.verify_local_link(a.id, str(b.expires), a.signature)
        assert not storage.verify_local_link(a.id, str(a.expires), "0" * 64)
        assert not storage.verify_local_link(uuid.uuid4().hex, str(a.expires), a.signature)


def test_public_url_inside_the_task_is_a_valid_link(saved: Saved, ray_cluster: Any) -> None:
    storage = Storage(ray_cluster.storage)
    link = parse_link(saved.result["link"])
    assert abs(link.expires - (saved.result["at"] + 60)) < 5
    assert storage.verify_local_link(link.id, str(link.expires), link.signature)
    assert read_output(storage, link.id)[1] == saved.blob
    # an expired link is refused
    assert not storage.verify_local_link(
        link.id, str(link.expires), link.signature, now=link.expires + 1
    )


def test_files_written_outside_the_scratch_folder_are_saved(
    ray_cluster: Any, unique_name: str
) -> None:
    """A handler that renders into a folder of its own (/tmp here, a volume in production)."""

    @task_queue(name=unique_name, cpu=0.25, retries=0)
    def render(blob: bytes) -> dict[str, str]:
        folder = tempfile.mkdtemp(prefix="raybeam-render-")
        Path(folder, "out.bin").write_bytes(blob)
        Path(folder, "frames").mkdir()
        Path(folder, "frames", "f1.txt").write_text("frame 1")
        Output(path=os.path.join(folder, "out.bin")).save()
        Output(path=Path(folder, "frames")).save()
        return {"folder": folder, "cwd": os.getcwd()}

    blob = os.urandom(50_000)
    task = render.put(blob)
    ran = task.result(timeout=60)
    folder = ran["folder"]
    try:
        assert not Path(folder).is_relative_to(ran["cwd"])  # outside the scratch folder
        storage = Storage(ray_cluster.storage)
        outputs = task.outputs()
        assert [o.name for o in outputs] == ["out.bin", "frames.zip"]
        link = parse_link(outputs[0].url)
        assert storage.verify_local_link(link.id, str(link.expires), link.signature)
        assert read_output(storage, link.id) == (
            f"outputs/{unique_name}/{task.id}/{link.id}/out.bin",
            blob,
        )
        _, archive = read_output(storage, parse_link(outputs[1].url).id)
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            assert zf.namelist() == ["f1.txt"]
            assert zf.read("f1.txt") == b"frame 1"
        assert Path(folder, "out.bin").read_bytes() == blob  # saved by reading: left in place
        # the scratch folder is gone, or kept empty for the worker's next attempt
        assert not Path(ran["cwd"]).exists() or not any(Path(ran["cwd"]).iterdir())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_unsafe_names_missing_and_special_files_fail_the_task(
    ray_cluster: Any, unique_name: str
) -> None:
    @task_queue(name=unique_name, cpu=0.25, retries=0)
    def bad(case: str) -> None:
        if case == "bytes":
            Output.from_bytes("../../escape.txt", b"x").save()
        elif case == "absolute name":
            Output.from_bytes("/etc/escape.txt", b"x").save()
        elif case == "missing":
            Output(path="nope.txt").save()
        elif case == "broken link":
            os.symlink("nowhere.txt", "latest.txt")
            Output(path="latest.txt").save()
        elif case == "fifo":
            os.mkfifo("pipe")  # nobody writes: reading it would hang the attempt
            Output(path="pipe").save()
        elif case == "device":
            Output(path="/dev/zero").save()  # reading it would never end

    cases = {
        "bytes": "'..' component",
        "absolute name": "is an absolute path",
        "missing": "nope.txt' does not exist",
        "broken link": "symbolic link to 'nowhere.txt', which does not exist",
        "fifo": "is a named pipe (FIFO), not a regular file or a folder",
        "device": "'/dev/zero' is a character device",
    }
    tasks = bad.map(list(cases))
    for task, expected in zip(tasks, cases.values(), strict=True):
        with pytest.raises(TaskFailed) as err:
            task.result(timeout=60)
        assert "InvalidOutputPath" in err.value.traceback
        assert expected in err.value.traceback
        info = task.info()
        assert info["status"] == "FAILED"
        assert "InvalidOutputPath" in info["failure_reason"]
        assert info["outputs"] == []
    storage = Storage(ray_cluster.storage)
    assert not storage.exists(f"outputs/{unique_name}")
    assert not (Path(ray_cluster.storage).parent / "escape.txt").exists()


def test_outputs_outside_a_task_are_refused(tmp_path: Path, unique_name: str) -> None:
    (tmp_path / "a.txt").write_text("x")

    @task_queue(name=unique_name)
    def saver() -> None:
        Output.from_bytes("a.txt", b"x").save()

    with pytest.raises(OutsideTask, match="only inside a running raybeam task"):
        Output(path=tmp_path / "a.txt")
    with pytest.raises(OutsideTask):
        Output.from_bytes("a.txt", b"x")
    with pytest.raises(OutsideTask):
        Output.from_pil_image(Image.new("RGB", (1, 1)))
    with pytest.raises(OutsideTask):
        saver()  # a plain local call is no task either
    assert issubclass(InvalidOutputPath, raybeam.RaybeamError)


# ---- S3 (moto's server) ------------------------------------------------------------------


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    with moto_s3(set_env=False) as endpoint:
        yield endpoint


def run_s3_scenario(endpoint: str, storage: str) -> str:
    """tests/scenarios/s3_outputs.py with its own Ray, storage on S3 at `endpoint`."""
    env = {**AWS_ENV, "AWS_ENDPOINT_URL_S3": endpoint}
    return scenarios.run_scenario("s3_outputs", storage=storage, env=env, drop=("RAYBEAM_", "AWS_"))


def test_s3_outputs_and_journal(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:

    bucket = "rb-" + uuid.uuid4().hex[:12]
    create_bucket(s3_endpoint, bucket)
    out = run_s3_scenario(s3_endpoint, f"s3://{bucket}/raybeam")
    assert "downloaded 3 outputs" in out, out
    found = re.search(r"task ([0-9a-f-]{36})", out)
    assert found, out
    task_id = found[1]

    client = s3_client(s3_endpoint)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    finally:
        client.close()
    assert any(re.fullmatch(r"raybeam/registry/journal/\d{16}\.jsonl", k) for k in keys), keys
    assert any(k.startswith("raybeam/registry/blobs/") for k in keys), keys
    assert not [k for k in keys if k.endswith(".tmp")], keys
    outputs = [k for k in keys if k.startswith(f"raybeam/outputs/s3q/{task_id}/")]
    assert sorted(k.rsplit("/", 1)[1] for k in outputs) == ["a.txt", "data.bin", "folder.zip"]
