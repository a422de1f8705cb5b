"""Storage against local disk and against S3 (moto's server over real HTTP on loopback)."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from raybeam import config
from raybeam.storage import SIGNING_KEY, Storage, storage_from_settings, sweep_outputs
from tests.support.moto_server import create_bucket, moto_s3

BUCKET = "raybeam-tests"
MiB = 2**20


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        create_bucket(endpoint, BUCKET)
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "storage")
    request.getfixturevalue("s3_endpoint")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture
def storage(storage_url: str) -> Storage:
    return Storage(storage_url, public_url="http://links.test")


def fetch(storage: Storage, key: str, output_id: str) -> bytes:
    """Follow a signed link: over HTTP when presigned, else check it as the HTTP route would."""
    url = storage.signed_url(key, output_id, expires_in=60)
    if storage.can_presign:
        response = httpx.get(url, trust_env=False)
        assert response.status_code == 200, response.text
        return response.content
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert url.startswith("http://links.test/output/id/")
    assert parts.path == f"/output/id/{output_id}"
    assert storage.verify_local_link(output_id, query["expires"][0], query["signature"][0])
    with storage.open(key) as f:
        data: bytes = f.read()
    return data


def test_bytes_round_trip(storage: Storage) -> None:
    key = "outputs/q/t/o1/hello.txt"
    storage.put_bytes(key, b"hello")
    assert storage.exists(key)
    assert storage.size(key) == 5
    with storage.open(key) as f:
        assert f.read() == b"hello"
    assert fetch(storage, key, "o1") == b"hello"
    storage.rm(key)
    assert not storage.exists(key)
    with pytest.raises(ValueError, match=r"'\.\.' component"):
        storage.path("outputs/../../elsewhere")


def test_open_for_writing_and_recursive_rm(storage: Storage) -> None:
    with storage.open("outputs/q/t/o1/a.bin", "wb") as f:
        f.write(b"a" * 10)
    storage.put_bytes("outputs/q/t/o1/b.bin", b"b")
    storage.rm("outputs/q/t/o1", recursive=True)
    assert not storage.exists("outputs/q/t/o1/a.bin")
    assert not storage.exists("outputs/q/t/o1/b.bin")


def test_put_file_and_find_output(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "report.csv"
    source.write_bytes(b"a,b\n1,2\n")
    output_id = uuid.uuid4().hex
    key = f"outputs/q/t/{output_id}/report.csv"
    storage.put_file(source, key)
    assert storage.find_output(output_id) == key
    assert storage.find_output(uuid.uuid4().hex) is None
    assert storage.find_output("../../*") is None
    assert fetch(storage, key, output_id) == source.read_bytes()


def local_link(storage: Storage, key: str, output_id: str) -> dict[str, str]:
    """The query of a local link, as the HTTP route receives it."""
    url = storage.signed_url(key, output_id, expires_in=60)
    assert urlsplit(url).path == f"/output/id/{output_id}"
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_a_local_link_finds_its_output_without_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = Storage(str(tmp_path / "storage"), public_url="http://links.test")
    output_id, other_id = uuid.uuid4().hex, uuid.uuid4().hex
    key = f"outputs/q/t-1/{output_id}/report & notes.csv"
    storage.put_bytes(key, b"a,b")
    storage.put_bytes(f"outputs/q/t-2/{other_id}/secret.txt", b"s")
    query = local_link(storage, key, output_id)
    assert set(query) == {"expires", "signature"}  # SPEC §3: the link names the id only
    assert storage.verify_local_link(output_id, query["expires"], query["signature"])
    query["path"] = "q/t-1/report & notes.csv"  # as the registry's output_key gives it

    def no_listing(*args: object, **kwargs: object) -> None:
        raise AssertionError("find_output listed the storage")

    monkeypatch.setattr(storage.fs, "glob", no_listing)
    monkeypatch.setattr(storage.fs, "find", no_listing)
    assert storage.find_output(output_id, query["path"]) == key
    # a changed path reaches nothing but this output id's own file
    for path in [
        "q/t-2/secret.txt",
        "q/t-1/other.csv",
        "q/../t-1/report & notes.csv",
        "q/t-1/x/report & notes.csv",
        "t-1/report & notes.csv",
        "q//report & notes.csv",
    ]:
        assert storage.find_output(output_id, path) is None, path
    assert storage.find_output("../x", query["path"]) is None


def test_links_without_a_path_still_find_their_output(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    output_id = uuid.uuid4().hex
    storage.put_bytes(f"outputs/q/t/{output_id}/a.txt", b"a")
    assert storage.find_output(output_id) == f"outputs/q/t/{output_id}/a.txt"
    assert storage.find_output(output_id, "") == f"outputs/q/t/{output_id}/a.txt"


def test_lookup_at_5000_outputs(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    root = tmp_path / "storage"
    links = []
    for i in range(5000):
        output_id = uuid.uuid4().hex
        folder = root / "outputs" / f"q{i % 5}" / f"task-{i}" / output_id
        folder.mkdir(parents=True)
        (folder / "out.bin").write_bytes(b"x")
        links.append((output_id, f"q{i % 5}/task-{i}/out.bin"))
    picked = links[::500]
    started = time.perf_counter()
    for output_id, path in picked:
        assert storage.find_output(output_id, path) is not None
    by_path = (time.perf_counter() - started) / len(picked)
    started = time.perf_counter()
    for output_id, _ in picked[:3]:
        assert storage.find_output(output_id) is not None
    by_listing = (time.perf_counter() - started) / 3
    print(
        f"lookup at 5,000 outputs: {by_path * 1e6:.0f} us by path, {by_listing * 1e3:.0f} ms listing"
    )
    assert by_path * 20 < by_listing


def test_presigning(storage: Storage, storage_url: str) -> None:
    assert storage.can_presign is storage_url.startswith("s3://")
    assert Storage("memory://raybeam-presign").can_presign is False
    if storage.can_presign:
        storage.put_bytes("outputs/q/t/o/x", b"x")
        url = storage.signed_url("outputs/q/t/o/x", "o", expires_in=120)
        query = parse_qs(urlsplit(url).query)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # SigV4
        assert query["X-Amz-Expires"] == ["120"]
    with pytest.raises(ValueError, match="positive"):
        storage.signed_url("outputs/q/t/o/x", "o", expires_in=0)


def test_signing_key_is_generated_once_and_shared(storage_url: str) -> None:
    first = Storage(storage_url)
    key = first.signing_key()
    assert len(key) == 64 and bytes.fromhex(key.decode())
    assert first.exists(SIGNING_KEY)
    if storage_url.startswith("/"):
        assert os.stat(first.path(SIGNING_KEY)).st_mode & 0o077 == 0  # a secret: owner only
    assert Storage(storage_url).signing_key() == key
    assert Storage(storage_url, signing_key="from-config").signing_key() == b"from-config"


def test_racing_storages_agree_on_the_signing_key(storage_url: str) -> None:
    storages = [Storage(storage_url) for _ in range(8)]
    keys: list[bytes] = []
    start = threading.Barrier(len(storages))

    def read(storage: Storage) -> None:
        start.wait()
        keys.append(storage.signing_key())

    threads = [threading.Thread(target=read, args=(s,)) for s in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == len(storages)
    assert len(set(keys)) == 1


def test_racing_storages_agree_on_the_webhook_key(storage_url: str) -> None:
    storages = [Storage(storage_url) for _ in range(6)]
    found: list[bytes] = []
    start = threading.Barrier(len(storages))

    def read(storage: Storage) -> None:
        start.wait()
        found.append(storage.webhook_key())

    threads = [threading.Thread(target=read, args=(s,)) for s in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == len(storages) and len(set(found)) == 1
    assert found[0] != storages[0].signing_key()
    assert Storage(storage_url).webhook_key() == found[0]


def test_local_links_are_verified(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"), public_url="https://raybeam.example/")
    now = time.time()
    url = storage.signed_url("outputs/q/t/abc/x.txt", "abc", expires_in=60)
    assert url.startswith("https://raybeam.example/output/id/abc?")
    query = parse_qs(urlsplit(url).query)
    expires, signature = query["expires"][0], query["signature"][0]
    assert now + 59 <= int(expires) <= now + 61

    assert storage.verify_local_link("abc", expires, signature)
    assert storage.verify_local_link("abc", int(expires), signature)
    assert not storage.verify_local_link("abd", expires, signature)
    assert not storage.verify_local_link("abc", str(int(expires) + 1), signature)
    tampered = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert not storage.verify_local_link("abc", expires, tampered)
    assert not storage.verify_local_link("abc", expires, signature, now=int(expires) + 1)
    other = Storage(str(tmp_path / "other"))
    assert not other.verify_local_link("abc", expires, signature)


@pytest.mark.parametrize(
    ("expires", "signature"),
    [
        ("", "00"),
        ("soon", "00"),
        ("-5", "00"),
        ("1e9", "00"),
        ("123", ""),
        ("123", "zz\x00"),
        ("\u0661\u0662", "00"),
    ],
)
def test_malformed_local_links_are_refused(tmp_path: Path, expires: str, signature: str) -> None:
    storage = Storage(str(tmp_path / "storage"))
    assert storage.verify_local_link("abc", expires, signature) is False


def test_link_check_never_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    storage = Storage(str(blocker / "storage"))  # the key can be neither read nor created
    assert storage.verify_local_link("abc", str(int(time.time()) + 60), "00") is False
    assert storage.verify_local_link(None, None, None) is False  # type: ignore[arg-type]


def test_storage_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "_overrides", {})
    monkeypatch.setenv("RAYBEAM_STORAGE", f"file://{tmp_path}/configured")
    monkeypatch.setenv("RAYBEAM_SIGNING_KEY", "s3cret")
    monkeypatch.setenv("RAYBEAM_PUBLIC_URL", "https://beam.example")
    storage = storage_from_settings()
    assert storage is storage_from_settings()
    assert storage.root == f"{tmp_path}/configured"
    assert storage.signing_key() == b"s3cret"
    assert storage.signed_url("k", "abc", 5).startswith("https://beam.example/output/id/abc?")
    assert storage_from_settings(str(tmp_path / "elsewhere")).root == f"{tmp_path}/elsewhere"


def test_storage_pickles_as_its_arguments(storage: Storage) -> None:
    copy = pickle.loads(pickle.dumps(storage))
    assert (copy.url, copy.root, copy.public_url) == (storage.url, storage.root, storage.public_url)
    storage.put_bytes("x", b"1")
    assert copy.exists("x")


def test_s3_endpoint_from_options(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # would be refused
    url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    storage = Storage(url, s3_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
    storage.put_bytes("a", b"via options")
    assert storage.signed_url("a", "o", 60).startswith(f"{s3_endpoint}/{BUCKET}/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert Storage(url).open("a").read() == b"via options"


# -- large files ---------------------------------------------------------------------------

_MEASURE_UPLOAD = """
import resource, sys
from raybeam.storage import Storage

storage = Storage(sys.argv[1])
storage.put_bytes("warm-up", b"x")  # imports, connections and caches before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
storage.put_file(sys.argv[2], sys.argv[3])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * (1 if sys.platform == "darwin" else 1024))
"""


def test_200_mib_round_trip_with_bounded_memory(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    block = os.urandom(MiB)
    expected = hashlib.sha256()
    with source.open("wb") as f:
        for i in range(200):
            chunk = i.to_bytes(4, "big") + block[4:]  # every MiB differs: order is checked too
            f.write(chunk)
            expected.update(chunk)
    output_id = uuid.uuid4().hex
    key = f"outputs/q/t/{output_id}/big.bin"

    # a fresh process, so the peak resident memory measured is the upload's alone
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE_UPLOAD, storage.url, str(source), key],
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    growth = int(measured.stdout.strip())
    assert growth < 64 * MiB, f"uploading 200 MiB grew the peak RSS by {growth / MiB:.0f} MiB"
    assert storage.size(key) == 200 * MiB

    received = hashlib.sha256()
    if storage.can_presign:
        url = storage.signed_url(key, output_id, expires_in=60)
        with httpx.stream("GET", url, trust_env=False, timeout=60) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes(MiB):
                received.update(chunk)
    else:
        with storage.open(key) as f:
            while chunk := f.read(MiB):
                received.update(chunk)
    assert received.hexdigest() == expected.hexdigest()


# -- retention -----------------------------------------------------------------------------


def test_sweep_removes_old_output_folders(storage: Storage) -> None:
    keys = [
        "outputs/q/t1/o1/a.txt",
        "outputs/q/t1/o1/nested/b.txt",
        "outputs/q/t2/o2/c.txt",
        "outputs/other/t3/o3/d.txt",
    ]
    for key in keys:
        storage.put_bytes(key, b"data")
    storage.put_bytes("outputs/stray.txt", b"not an output folder")
    storage.signing_key()
    now = time.time()

    assert sweep_outputs(storage, older_than_seconds=3600, now=now) == 0
    assert all(storage.exists(key) for key in keys)

    assert sweep_outputs(storage, older_than_seconds=3600, now=now + 7200) == 3
    assert not any(storage.exists(key) for key in keys)
    assert storage.exists("outputs/stray.txt")
    assert storage.exists(SIGNING_KEY)
    assert sweep_outputs(storage, older_than_seconds=3600, now=now + 7200) == 0


def test_sweep_keeps_folders_with_recent_files(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    old = time.time() - 10 * 86400
    for key in ("outputs/q/t1/o1/a.txt", "outputs/q/t2/o2/a.txt", "outputs/q/t2/o2/b.txt"):
        storage.put_bytes(key, b"x")
        os.utime(storage.path(key), (old, old))
    storage.put_bytes("outputs/q/t2/o2/recent.txt", b"x")

    assert sweep_outputs(storage, older_than_seconds=86400) == 1
    assert not (tmp_path / "storage/outputs/q/t1").exists()  # the emptied task folder too
    assert storage.exists("outputs/q/t2/o2/a.txt")


def test_sweep_without_outputs(tmp_path: Path) -> None:
    assert sweep_outputs(Storage(str(tmp_path / "empty")), older_than_seconds=1) == 0
