"""Files a task hands back: `Output`, stored under `outputs/<queue>/<task_id>/<output_id>/<name>`.

Outputs are saved to the storage of the running task (SPEC §1, §5) and recorded on the task
context; the registry lists them on the task with links signed afresh on every read.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from raybeam.context import TaskContext, current_context
from raybeam.errors import InvalidOutputPath, OutsideTask, RaybeamError
from raybeam.storage import OUTPUTS, Storage, storage_from_settings

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

_MAX_NAME_BYTES = 255


class Output:
    """A file, a folder (stored zipped) or some bytes that a task saves for its caller.

    Valid only inside a running task. Relative paths are read from the task's working
    directory, a fresh scratch folder per attempt.

    >>> @task_queue()
    ... def render(x: int) -> None:
    ...     with open("sum.txt", "w") as f:
    ...         f.write(str(x * 2))
    ...     Output(path="sum.txt").save()
    """

    #: the output's id (uuid4 hex); None until saved
    id: str | None
    #: the stored file name: the file's own, `<folder>.zip`, or the name given
    name: str
    #: where it is stored, relative to the storage root; None until saved
    key: str | None
    #: bytes stored; None until saved
    size: int | None

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._context = _task_context("Output(path=...)")
        resolved = _inside_working_directory(path)
        self._path: Path | None = resolved
        self._data: bytes | None = None
        self.name = _path_name(resolved)
        self.id = self.key = self.size = None

    @classmethod
    def from_bytes(cls, name: str, data: bytes | bytearray | memoryview) -> Output:
        """An output holding `data`, stored as `name` by `.save()`.

        >>> Output.from_bytes("result.json", b'{"ok": true}').save()  # doctest: +SKIP
        """
        output = cls.__new__(cls)
        output._context = _task_context("Output.from_bytes(...)")
        output._path = None
        output._data = bytes(data)
        output.name = _safe_name(name)
        output.id = output.key = output.size = None
        return output

    @classmethod
    def from_pil_image(
        cls, image: PILImage, format: str = "png", name: str | None = None
    ) -> Output:
        """A Pillow image encoded as `format`, stored as `name` (default `image.<format>`).

        >>> Output.from_pil_image(Image.new("RGB", (64, 64))).save()  # doctest: +SKIP
        """
        _task_context("Output.from_pil_image(...)")
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        return cls.from_bytes(name or f"image.{format.lower()}", buffer.getvalue())

    def __repr__(self) -> str:
        return f"Output(name={self.name!r}, id={self.id!r}, size={self.size!r})"

    def save(self) -> Output:
        """Upload to the task's storage (streamed), record it on the task, and return self.

        Saving again returns the same stored output without uploading twice.
        """
        if self.id is not None:
            return self
        ctx = self._context
        if self._path is not None:
            self.name = _path_name(self._path)
        output_id = uuid.uuid4().hex
        key = "/".join(
            [
                OUTPUTS,
                _component(ctx.queue, "queue name"),
                _component(ctx.task_id, "task id"),
                output_id,
                self.name,
            ]
        )
        storage = _storage(ctx)
        if self._data is not None:
            storage.put_bytes(key, self._data)
            size = len(self._data)
        else:
            size = self._upload_path(storage, key)
        self.id, self.key, self.size = output_id, key, size
        ctx.saved_outputs.append({"id": output_id, "name": self.name, "key": key, "size": size})
        return self

    def public_url(self, expires: int = 3600) -> str:
        """A download link for the saved output, valid for `expires` seconds.

        >>> Output(path="sum.txt").save().public_url(expires=600)  # doctest: +SKIP
        """
        if self.id is None or self.key is None:
            raise RaybeamError(f"output {self.name!r} is not saved yet; call .save() first")
        return _storage(self._context).signed_url(self.key, self.id, expires)

    def _upload_path(self, storage: Storage, key: str) -> int:
        assert self._path is not None
        path = self._path
        if path.is_file():
            storage.put_file(path, key)
            return path.stat().st_size
        if path.is_dir():
            fd, archive = tempfile.mkstemp(prefix="raybeam-output-", suffix=".zip")
            os.close(fd)
            try:
                _zip_folder(path, archive)
                storage.put_file(archive, key)
                return os.path.getsize(archive)
            finally:
                os.unlink(archive)
        if not path.exists():
            raise InvalidOutputPath(
                f"output file {str(path)!r} does not exist; write it before calling .save() "
                f"(relative paths are read from the task's working directory, {os.getcwd()!r})"
            )
        raise InvalidOutputPath(f"output {str(path)!r} is neither a regular file nor a folder")


def _task_context(what: str) -> TaskContext:
    try:
        return current_context()
    except OutsideTask:
        raise OutsideTask(
            f"{what} works only inside a running raybeam task (the body of a @task_queue "
            "handler run through .put(), .map() or HTTP); outside a task there is no task "
            "to attach the file to"
        ) from None


def _storage(ctx: TaskContext) -> Storage:
    return storage_from_settings(ctx.storage_url or None)


def _inside_working_directory(path: str | os.PathLike[str]) -> Path:
    """The path of an output, which must lie inside the task's working directory."""
    text = os.fspath(path)
    if not isinstance(text, str):
        raise InvalidOutputPath(f"an output path must be a str or os.PathLike[str], got {path!r}")
    if not text.strip():
        raise InvalidOutputPath("an output path must not be empty")
    if "\x00" in text:
        raise InvalidOutputPath(f"an output path must not contain NUL bytes: {text!r}")
    if ".." in Path(text).parts:
        raise InvalidOutputPath(
            f"output path {text!r} has a '..' component; pass a path inside the task's "
            "working directory, such as 'result.txt' or 'out/result.txt'"
        )
    cwd = Path.cwd().resolve()
    resolved = (cwd / text).resolve()
    if resolved == cwd or not resolved.is_relative_to(cwd):
        raise InvalidOutputPath(
            f"output path {text!r} is outside the task's working directory {str(cwd)!r}; "
            "write the file inside it (relative paths such as 'result.txt' land there) "
            "and pass that path"
        )
    return cwd / text


def _safe_name(name: str) -> str:
    """The stored name: the last part of a relative name, refused when it cannot be made safe."""
    if not isinstance(name, str):
        raise InvalidOutputPath(f"an output name must be a str, got {type(name).__name__}")
    if "\x00" in name:
        raise InvalidOutputPath(f"an output name must not contain NUL bytes: {name!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidOutputPath(f"an output name must not contain control characters: {name!r}")
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", name):
        raise InvalidOutputPath(
            f"output name {name!r} is an absolute path; give a plain file name such as 'result.txt'"
        )
    if ".." in parts:
        raise InvalidOutputPath(
            f"output name {name!r} has a '..' component; give a plain file name such as 'result.txt'"
        )
    base = next((part for part in reversed(parts) if part), "")
    if not base.strip() or base == ".":
        raise InvalidOutputPath(
            f"output name {name!r} is empty; give a file name such as 'result.txt'"
        )
    if len(base.encode()) > _MAX_NAME_BYTES:
        raise InvalidOutputPath(
            f"output name {base[:40]!r}... is longer than {_MAX_NAME_BYTES} bytes; shorten it"
        )
    return base


def _path_name(path: Path) -> str:
    name = _safe_name(path.name)
    return _safe_name(f"{name}.zip") if path.is_dir() else name


def _component(value: str, what: str) -> str:
    if not value or value in (".", "..") or any(c in value for c in "/\\\x00"):
        raise InvalidOutputPath(f"cannot store outputs under the {what} {value!r}")
    return value


def _zip_folder(folder: Path, archive: str) -> None:
    """Zip `folder` into the file `archive`, one member at a time (never whole in memory).

    Symbolic links that lead outside the task's working directory are left out.
    """
    fence = Path.cwd().resolve()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            current = Path(dirpath)
            if current != folder and not dirnames and not filenames:
                zf.write(current, current.relative_to(folder).as_posix() + "/")
            for filename in sorted(filenames):
                file = current / filename
                if file.is_symlink() and not file.resolve().is_relative_to(fence):
                    logger.warning(
                        "left %s out of %s.zip: it links outside the task", file, folder.name
                    )
                    continue
                if file.is_file():
                    zf.write(file, file.relative_to(folder).as_posix())
