"""Output inside a fake task, stored locally and on S3 (moto's server), fetched over real HTTP.

Local links are served by a stand-in for the HTTP API's `/output/id/{output_id}` route that
checks them as that route must (`verify_local_link`, then 403 or the file).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
from PIL import Image

import raybeam
from raybeam import config, connection
from raybeam.context import TaskContext, reset_context, set_context
from raybeam.errors import InvalidOutputPath, OutsideTask, RaybeamError
from raybeam.outputs import Output, OutputFile
from raybeam.storage import Storage, storage_from_settings
from tests.support.moto_server import create_bucket, moto_s3

BUCKET = "raybeam-outputs"
KEY = re.compile(r"outputs/handler/(?P<task>[0-9a-f-]{36})/(?P<id>[0-9a-f]{32})/(?P<name>[^/]+)")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        create_bucket(endpoint, BUCKET)
        yield endpoint


class _LocalLinks(BaseHTTPRequestHandler):
    storage: Storage

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        match = re.fullmatch(r"/output/id/([0-9a-f]+)", parts.path)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        if match is None:
            self.send_error(404)
            return
        output_id = match[1]
        if not self.storage.verify_local_link(
            output_id, query.get("expires", ""), query.get("signature", "")
        ):
            self.send_error(403)
            return
        key = self.storage.find_output(output_id)
        if key is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(self.storage.size(key)))
        self.end_headers()
        with self.storage.open(key) as f:
            shutil.copyfileobj(f, self.wfile)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def link_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LocalLinks)
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def links(link_server: ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch) -> ThreadingHTTPServer:
    """The stand-in route on loopback, its base URL configured as RAYBEAM_PUBLIC_URL."""
    monkeypatch.setattr(config, "_overrides", {})
    monkeypatch.delenv("RAYBEAM_SIGNING_KEY", raising=False)
    monkeypatch.setenv("RAYBEAM_PUBLIC_URL", f"http://127.0.0.1:{link_server.server_address[1]}")
    return link_server


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, links: ThreadingHTTPServer) -> Storage:
    if request.param == "local":
        url = str(tmp_path / "storage")
    else:
        request.getfixturevalue("s3_endpoint")
        url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    storage = storage_from_settings(url)
    links.RequestHandlerClass.storage = storage  # type: ignore[attr-defined]
    return storage


@pytest.fixture
def task(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TaskContext]:
    """A fake running task on each storage: its context set, a fresh scratch folder as cwd."""
    yield from _in_task(storage.url, tmp_path, monkeypatch)


@pytest.fixture
def local_task(
    links: ThreadingHTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TaskContext]:
    """The same on local storage only, for what never reaches the storage."""
    yield from _in_task(str(tmp_path / "storage"), tmp_path, monkeypatch)


def _in_task(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TaskContext]:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    ctx = TaskContext(task_id=str(uuid.uuid4()), queue="handler", attempt=1, storage_url=url)
    token = set_context(ctx)
    yield ctx
    reset_context(token)


def download(url: str) -> httpx.Response:
    return httpx.get(url, trust_env=False, timeout=30)


def check_saved(output: Output, task: TaskContext, name: str) -> bytes:
    """Check what save() recorded, then fetch the output through its link."""
    assert output.id is not None and output.key is not None
    match = KEY.fullmatch(output.key)
    assert match, output.key
    assert (match["task"], match["id"], match["name"]) == (task.task_id, output.id, name)
    assert output.name == name
    assert {"id": output.id, "name": name, "key": output.key, "size": output.size} in (
        task.saved_outputs
    )
    response = download(output.public_url(expires=60))
    assert response.status_code == 200, response.text
    assert len(response.content) == output.size
    return response.content


def test_save_a_file(task: TaskContext) -> None:
    Path("sum.txt").write_text("20")
    output = Output(path="sum.txt")
    assert output.save() is output
    assert check_saved(output, task, "sum.txt") == b"20"
    assert output.save() is output and len(task.saved_outputs) == 1  # saved once


def test_save_a_file_in_a_subfolder_by_absolute_path(task: TaskContext) -> None:
    Path("out").mkdir()
    Path("out/result.json").write_bytes(b'{"ok": true}')
    output = Output(path=Path.cwd() / "out" / "result.json").save()
    assert check_saved(output, task, "result.json") == b'{"ok": true}'


def test_save_a_folder_as_zip(task: TaskContext) -> None:
    Path("frames/sub").mkdir(parents=True)
    Path("frames/empty").mkdir()
    Path("frames/a.txt").write_text("a")
    Path("frames/sub/b.bin").write_bytes(bytes(range(256)) * 100)
    Path("frames/sub/inside").symlink_to("../a.txt")
    Path("frames/outside").symlink_to("/etc/hostname")  # a link to a file: followed
    Path("frames/loop").symlink_to(".")  # a link to a folder: not followed
    Path("frames/broken").symlink_to("nowhere")
    os.mkfifo("frames/pipe")  # no writer: reading it would wait forever
    output = Output(path="frames/").save()
    archive = zipfile.ZipFile(io.BytesIO(check_saved(output, task, "frames.zip")))
    assert sorted(archive.namelist()) == ["a.txt", "empty/", "outside", "sub/b.bin", "sub/inside"]
    assert archive.read("sub/inside") == b"a"
    assert archive.read("a.txt") == b"a"
    assert archive.read("outside") == Path("/etc/hostname").read_bytes()
    assert archive.read("sub/b.bin") == bytes(range(256)) * 100
    assert not list(Path("frames").parent.glob("*.zip"))  # the zip was built elsewhere


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """A folder outside the task's scratch folder, as /tmp/render or a mounted volume is."""
    folder = Path(tempfile.mkdtemp(prefix="raybeam-elsewhere-"))
    yield folder
    shutil.rmtree(folder)


def test_save_a_file_outside_the_scratch_folder(task: TaskContext, elsewhere: Path) -> None:
    (elsewhere / "out.png").write_bytes(b"\x89PNG rendered")
    assert not elsewhere.is_relative_to(Path.cwd())
    output = Output(path=elsewhere / "out.png").save()
    assert check_saved(output, task, "out.png") == b"\x89PNG rendered"
    assert (elsewhere / "out.png").exists()  # saving reads the file, never moves it


def test_save_a_folder_outside_the_scratch_folder_as_zip(
    task: TaskContext, elsewhere: Path
) -> None:
    (elsewhere / "render" / "deep").mkdir(parents=True)
    (elsewhere / "render" / "deep" / "frame1.txt").write_text("one")
    output = Output(path=str(elsewhere / "render")).save()
    archive = zipfile.ZipFile(io.BytesIO(check_saved(output, task, "render.zip")))
    assert archive.namelist() == ["deep/frame1.txt"]
    assert archive.read("deep/frame1.txt") == b"one"


def test_a_relative_path_is_read_from_the_working_directory_when_made(
    local_task: TaskContext, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Path("out").mkdir()
    Path("out/result.txt").write_text("scratch")
    Path("../sibling").mkdir()
    Path("../sibling/result.txt").write_text("sibling")
    from_scratch = Output(path="out/result.txt")
    from_sibling = Output(path="../sibling/result.txt")  # '..' in a path is fine
    monkeypatch.chdir(elsewhere)  # both were resolved already: moving on changes nothing
    from_scratch.save()
    from_sibling.save()
    storage = storage_from_settings(local_task.storage_url)
    stored = []
    for saved in local_task.saved_outputs:
        with storage.open(saved["key"]) as f:
            stored.append(f.read())
    assert stored == [b"scratch", b"sibling"]
    assert (from_scratch.name, from_sibling.name) == ("result.txt", "result.txt")


def test_a_symlink_is_stored_under_its_own_name(local_task: TaskContext, elsewhere: Path) -> None:
    (elsewhere / "frame-0042.png").write_bytes(b"png")
    Path("latest.png").symlink_to(elsewhere / "frame-0042.png")
    output = Output(path="latest.png").save()
    assert output.name == "latest.png" and output.size == 3


def test_the_working_directory_itself_is_zipped_under_its_name(local_task: TaskContext) -> None:
    Path("a.txt").write_text("a")
    output = Output(path=".").save()
    assert output.name == f"{Path.cwd().name}.zip"
    with storage_from_settings(local_task.storage_url).open(str(output.key)) as f:
        assert zipfile.ZipFile(io.BytesIO(f.read())).namelist() == ["a.txt"]


def test_save_bytes(task: TaskContext) -> None:
    output = Output.from_bytes("data.bin", b"\x00\x01binary")
    assert output.id is None
    output.save()
    assert check_saved(output, task, "data.bin") == b"\x00\x01binary"


def test_save_a_pil_image(task: TaskContext) -> None:
    image = Image.new("RGB", (16, 8), (200, 30, 60))
    output = Output.from_pil_image(image).save()
    data = check_saved(output, task, "image.png")
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG"
    assert decoded.size == (16, 8)
    assert decoded.getpixel((3, 3)) == (200, 30, 60)

    jpeg = Output.from_pil_image(image, format="jpeg", name="photo.jpg").save()
    assert Image.open(io.BytesIO(check_saved(jpeg, task, "photo.jpg"))).format == "JPEG"


@pytest.mark.parametrize(
    ("name", "stored"),
    [("sub/dir/a.txt", "a.txt"), ("./a.txt", "a.txt"), ("a.txt/", "a.txt"), ("a:b.txt", "a:b.txt")],
)
def test_relative_names_keep_their_basename(
    local_task: TaskContext, name: str, stored: str
) -> None:
    assert Output.from_bytes(name, b"x").name == stored


def test_tampered_and_expired_local_links_get_403(
    local_task: TaskContext, links: ThreadingHTTPServer
) -> None:
    storage = storage_from_settings(local_task.storage_url)
    links.RequestHandlerClass.storage = storage  # type: ignore[attr-defined]
    output = Output.from_bytes("a.txt", b"secret").save()
    assert output.id is not None
    url = output.public_url(expires=60)
    assert download(url).content == b"secret"

    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}

    def with_query(path: str = parts.path, **changes: str) -> str:
        new = {**query, **changes}
        return urlunsplit(
            parts._replace(path=path, query="&".join(f"{k}={v}" for k, v in new.items()))
        )

    other_id = uuid.uuid4().hex
    assert download(with_query(signature="0" * 64)).status_code == 403
    assert download(with_query(expires=str(int(query["expires"]) + 3600))).status_code == 403
    assert download(with_query(path=f"/output/id/{other_id}")).status_code == 403
    assert download(with_query(expires="", signature="")).status_code == 403

    expired_at = int(query["expires"]) - 3600
    expired = storage._link_signature(output.id, expired_at)  # correctly signed, but in the past
    assert download(with_query(expires=str(expired_at), signature=expired)).status_code == 403


@pytest.mark.parametrize("path", ["", "   ", "a\x00b", b"sum.txt", "/"])
def test_malformed_paths_are_refused(local_task: TaskContext, path: Any) -> None:
    with pytest.raises(InvalidOutputPath, match="output path"):
        Output(path=path)
    assert local_task.saved_outputs == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("special", "kind"),
    [("fifo", "a named pipe"), ("/dev/zero", "a character device"), ("socket", "a socket")],
)
def test_special_files_are_refused_without_reading_them(
    local_task: TaskContext, elsewhere: Path, special: str, kind: str
) -> None:
    """A FIFO without a writer would block, /dev/zero would stream forever."""
    path = elsewhere / special
    if special == "fifo":
        os.mkfifo(path)
    elif special == "socket":
        import socket

        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    else:
        path = Path(special)
    Path("link").symlink_to(path)  # through a link too
    for given in (path, "link"):
        with pytest.raises(InvalidOutputPath, match=f"is {kind}.*, not a regular file or a folder"):
            Output(path=given).save()
    assert local_task.saved_outputs == []


def test_a_broken_symlink_names_its_target(local_task: TaskContext) -> None:
    Path("latest.png").symlink_to("frames/0042.png")
    with pytest.raises(InvalidOutputPath, match=r"symbolic link to 'frames/0042.png', which does"):
        Output(path="latest.png").save()
    assert local_task.saved_outputs == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_gives_a_clear_error(local_task: TaskContext, elsewhere: Path) -> None:
    secret = elsewhere / "secret.txt"
    secret.write_text("x")
    secret.chmod(0)
    with pytest.raises(InvalidOutputPath, match=r"cannot be read by the task \(Permission denied"):
        Output(path=secret).save()
    assert local_task.saved_outputs == []


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "a/../../x",
        "..",
        "/etc/passwd",
        "\\\\server\\share",
        "C:\\x",
        "",
        "a\x00",
        "a\nb",
        "x" * 300,
    ],
)
def test_unsafe_names_are_refused(local_task: TaskContext, name: str) -> None:
    with pytest.raises(InvalidOutputPath):
        Output.from_bytes(name, b"x")


def test_a_queue_name_that_would_escape_is_refused(local_task: TaskContext) -> None:
    local_task.queue = "../other"
    with pytest.raises(InvalidOutputPath, match="queue name"):
        Output.from_bytes("a.txt", b"x").save()


@pytest.mark.parametrize("path", ["not-written.txt", "/tmp/no-such-folder-rb/not-written.txt"])
def test_a_missing_file_gives_a_clear_error(local_task: TaskContext, path: str) -> None:
    output = Output(path=path)
    with pytest.raises(InvalidOutputPath, match=r"'.*not-written.txt' does not exist; write it"):
        output.save()
    assert local_task.saved_outputs == []


def test_links_need_a_saved_output(local_task: TaskContext) -> None:
    with pytest.raises(RaybeamError, match=r"call \.save\(\) first"):
        Output.from_bytes("a.txt", b"x").public_url()


def test_outputs_outside_a_task_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("sum.txt").write_text("1")
    with pytest.raises(OutsideTask, match=r"Output\(path=...\) works only inside a running"):
        Output(path="sum.txt")
    with pytest.raises(OutsideTask, match="inside a running raybeam task"):
        Output.from_bytes("a.txt", b"x")
    with pytest.raises(OutsideTask, match="inside a running raybeam task"):
        Output.from_pil_image(Image.new("RGB", (1, 1)))


# ---- OutputFile: what task.outputs() lists ---------------------------------------------------

LISTED: dict[str, Any] = {
    "name": "sum.txt",
    "url": "http://127.0.0.1:8000/output/id/c339",
    "expires_in": 3600,
}


def test_output_file_has_attributes_and_reads_as_the_records_dict() -> None:
    output = OutputFile(name="sum.txt", url=LISTED["url"], expires_in=3600)
    assert (output.name, output.url, output.expires_in) == ("sum.txt", LISTED["url"], 3600)
    assert output == LISTED and output != {**LISTED, "expires_in": 60}
    as_dict = dict(LISTED)
    assert as_dict == output  # with the dict on the left too
    assert output["url"] == output.get("url") == LISTED["url"]
    assert output.get("size") is None and "url" in output and "size" not in output
    with pytest.raises(KeyError):
        output["size"]
    assert dict(output) == LISTED and list(output) == ["name", "url", "expires_in"]
    assert repr(output) == f"OutputFile(name='sum.txt', url={LISTED['url']!r}, expires_in=3600)"
    assert hash(output) == hash(OutputFile(**LISTED))
    with pytest.raises(dataclasses.FrozenInstanceError):
        output.url = "http://elsewhere"  # type: ignore[misc]
    assert not hasattr(output, "__dict__")  # slots
    assert raybeam.OutputFile is OutputFile and "OutputFile" in raybeam.__all__


def test_task_outputs_lists_output_files_and_info_keeps_dicts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    second: dict[str, Any] = {
        "name": "plots.zip",
        "url": "http://127.0.0.1:8000/output/id/d44",
        "expires_in": 60,
    }
    record = {"id": "t1", "status": "COMPLETE", "outputs": [LISTED, second]}
    monkeypatch.setattr(connection, "call", lambda method, *args: record)
    task = raybeam.Task("t1")
    outputs = task.outputs()
    assert outputs == [OutputFile(**LISTED), OutputFile(**second)]
    assert all(type(o) is OutputFile for o in outputs)
    assert outputs[1].url == second["url"] and outputs[1]["expires_in"] == 60
    assert outputs == task.info()["outputs"]
    assert all(type(o) is dict for o in task.info()["outputs"])
