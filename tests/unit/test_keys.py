"""Keys (SPEC §10): a webhook key apart from the signing key, each generated exactly once
however many processes race for it, and secrets handed over through Ray's key-value store
(here a dict standing in for it; tests/test_keys_e2e.py uses the real one)."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from raybeam import config, keys
from raybeam.cli import main
from raybeam.config import Settings
from raybeam.errors import InvalidConfiguration, RaybeamError
from raybeam.storage import SIGNING_KEY, WEBHOOK_KEY, Storage, storage_from_settings


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "_overrides", {})
    for env in config._ENV.values():
        monkeypatch.delenv(env, raising=False)


def test_the_webhook_key_is_generated_apart_from_the_signing_key(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    webhook = storage.webhook_key()
    assert len(webhook) == 64 and bytes.fromhex(webhook.decode())
    assert (tmp_path / "storage" / WEBHOOK_KEY).read_bytes() == webhook
    assert (tmp_path / "storage" / WEBHOOK_KEY).stat().st_mode & 0o077 == 0
    assert webhook != storage.signing_key()
    assert Storage(str(tmp_path / "storage")).webhook_key() == webhook
    configured = Storage(str(tmp_path / "storage"), webhook_key="hook-secret")
    assert configured.webhook_key() == b"hook-secret"
    assert configured.signing_key() == storage.signing_key()


def test_a_link_signed_with_the_webhook_key_is_refused(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path / "storage"))
    expires = int(time.time()) + 60
    message = f"abc.{expires}".encode()

    def signed(key: bytes) -> str:
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    assert storage.verify_local_link("abc", str(expires), signed(storage.signing_key()))
    assert not storage.verify_local_link("abc", str(expires), signed(storage.webhook_key()))


def test_the_same_key_for_both_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    same = Storage(str(tmp_path / "a"), signing_key="one", webhook_key="one")
    with pytest.raises(InvalidConfiguration, match="RAYBEAM_WEBHOOK_KEY"):
        same.webhook_key()
    generated = Storage(str(tmp_path / "b"))
    copied = Storage(str(tmp_path / "b"), webhook_key=generated.signing_key().decode())
    with pytest.raises(InvalidConfiguration, match="same as the signing key"):
        copied.webhook_key()
    monkeypatch.setenv("RAYBEAM_SIGNING_KEY", "one")
    monkeypatch.setenv("RAYBEAM_WEBHOOK_KEY", "one")
    with pytest.raises(InvalidConfiguration, match="RAYBEAM_WEBHOOK_KEY is the same"):
        config.settings()


def test_webhook_key_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYBEAM_STORAGE", str(tmp_path / "storage"))
    monkeypatch.setenv("RAYBEAM_WEBHOOK_KEY", "from-env")
    assert config.settings().webhook_key == "from-env"
    assert storage_from_settings().webhook_key() == b"from-env"
    assert config.configure(webhook_key="from-python").webhook_key == "from-python"
    assert storage_from_settings().webhook_key() == b"from-python"


def test_keys_webhook_prints_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAYBEAM_STORAGE", str(tmp_path / "storage"))
    assert main(["keys", "webhook"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.encode() == Storage(str(tmp_path / "storage")).webhook_key()
    monkeypatch.setenv("RAYBEAM_WEBHOOK_KEY", "configured")
    assert main(["keys", "webhook"]) == 0
    assert capsys.readouterr().out.strip() == "configured"


# -- created once, whoever races -----------------------------------------------------------

_RACER = """
import sys
from raybeam.storage import Storage
storage = Storage(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
print(storage.signing_key().decode(), storage.webhook_key().decode())
"""


def test_racing_processes_end_with_the_same_keys(tmp_path: Path) -> None:
    url = str(tmp_path / "storage")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    for racer in racers:  # every one imported raybeam and waits: then all go at once
        assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write("go\n")
        racer.stdin.flush()
    answers = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    assert all(racer.returncode == 0 for racer in racers)
    assert len(answers) == 1
    signing, webhook = answers.pop().split()
    assert (tmp_path / "storage" / SIGNING_KEY).read_text() == signing
    assert (tmp_path / "storage" / WEBHOOK_KEY).read_text() == webhook
    assert not list((tmp_path / "storage" / "keys").glob("*.tmp"))


def test_racing_threads_end_with_the_same_webhook_key(tmp_path: Path) -> None:
    storages = [Storage(str(tmp_path / "storage")) for _ in range(8)]
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


class NoExclusiveCreate(MemoryFileSystem):
    """An object store without conditional creates, whose second writer lands late."""

    protocol = "rbnoexcl"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    first_reads = threading.Barrier(2, timeout=10)
    writes = 0
    lock = threading.Lock()

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "x" in mode:
            raise ValueError("mode 'x' is not supported")
        return super()._open(path, mode, **kwargs)

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        if getattr(_reads, "done", True):
            return super().cat_file(path, *args, **kwargs)
        _reads.done = True
        try:
            return super().cat_file(path, *args, **kwargs)
        finally:
            type(self).first_reads.wait()  # both racers found no key before either writes

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        with type(self).lock:
            type(self).writes += 1
            late = type(self).writes == 2
        if late:
            time.sleep(0.3)
        super().pipe_file(path, value, *args, **kwargs)


_reads = threading.local()


@pytest.fixture
def no_exclusive_store() -> Iterator[str]:
    fsspec.register_implementation(NoExclusiveCreate.protocol, NoExclusiveCreate, clobber=True)
    yield f"{NoExclusiveCreate.protocol}://keys-race"
    NoExclusiveCreate.store.clear()


def test_without_conditional_creates_racers_read_back_the_last_write(
    no_exclusive_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "SETTLE_SECONDS", 0.8)
    found: list[bytes] = []

    def read() -> None:
        _reads.done = False
        found.append(Storage(no_exclusive_store, signing_key="configured").webhook_key())

    threads = [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert NoExclusiveCreate.writes == 2  # both generated a key: the race did happen
    assert len(found) == 2 and found[0] == found[1]


# -- secrets through Ray's key-value store ------------------------------------------------


@pytest.fixture
def kv(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, bytes]:
    store: dict[bytes, bytes] = {}

    def put(key: bytes, value: bytes, overwrite: bool, *, namespace: str) -> bool:
        assert namespace == "raybeam"
        store[key] = value
        return False

    def get(key: bytes, *, namespace: str) -> bytes | None:
        return store.get(key)

    monkeypatch.setattr(keys, "_kv", lambda: keys._KV(put, get))
    return store


def test_published_secrets_fill_in_what_a_process_leaves_unset(
    kv: dict[bytes, bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deployer = Settings(auth_tokens=("tok-1", "tok-2"), signing_key="sign", webhook_key="hook")
    keys.publish_secrets(deployer)
    assert json.loads(kv[b"secret/auth_tokens"]) == ["tok-1", "tok-2"]
    assert keys.read_secrets() == keys.Secrets(("tok-1", "tok-2"), "sign", "hook")

    monkeypatch.setenv("RAYBEAM_STORAGE", str(tmp_path / "storage"))
    storage = storage_from_settings()
    assert (storage.signing_key(), storage.webhook_key()) == (b"sign", b"hook")

    monkeypatch.setenv("RAYBEAM_SIGNING_KEY", "own-key")
    adopted = keys.adopt_secrets()
    assert adopted.auth_tokens == ("tok-1", "tok-2")
    assert (adopted.signing_key, adopted.webhook_key) == ("own-key", "hook")


def test_a_client_without_tokens_never_opens_the_api(kv: dict[bytes, bytes]) -> None:
    keys.publish_secrets(Settings(auth_tokens=("tok",)))
    keys.publish_secrets(Settings(), tokens=False)  # a client starting the registry
    assert keys.read_secrets().auth_tokens == ("tok",)
    keys.publish_secrets(Settings(signing_key="new"), tokens=False)
    assert keys.read_secrets() == keys.Secrets(("tok",), "new", None)
    keys.publish_secrets(Settings())  # the deployer chose open mode
    assert keys.read_secrets().auth_tokens == ()


def test_a_pickled_storage_carries_no_keys(tmp_path: Path) -> None:
    import pickle

    storage = Storage(str(tmp_path / "storage"), signing_key="s3cret-sign", webhook_key="s3cret")
    data = pickle.dumps(storage)
    assert b"s3cret" not in data
    copy = pickle.loads(data)
    assert copy.signing_key() == Storage(str(tmp_path / "storage")).signing_key()


def test_without_ray_nothing_is_published_or_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # as in a process that never joined Ray (this one may have, for the behaviour tests)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert keys.read_secrets() == keys.Secrets()
    with pytest.raises(RaybeamError, match="connected Ray"):
        keys.publish_secrets(Settings())
