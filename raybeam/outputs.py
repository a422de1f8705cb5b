"""Files a task hands back: `Output`, stored under `outputs/<queue>/<task_id>/<output_id>/<name>`.

Outputs are saved to the storage of the running task (SPEC §1, §5) and recorded on the task
context; the registry lists them on the task with links signed afresh on every read, and
`task.outputs()` hands them out as `OutputFile`s.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import stat
import tempfile
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from raybeam.context import TaskContext, current_context
from raybeam.errors import InvalidOutputPath, OutsideTask, RaybeamError
from raybeam.storage import OUTPUTS, Storage, storage_from_settings

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

logger = logging.getLogger(__name__)

_MAX_NAME_BYTES = 255


class Output:
    """A file, a folder (stored zipped) or some bytes that a task saves for its caller.

    Valid only inside a running task. `path` is any readable file or folder: absolute
    (`/tmp/render/out.png`, a mounted volume) or relative to the task's working directory (a
    fresh scratch folder per attempt) when the Output is made.

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
        resolved = _output_path(path)
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
        if _readable_kind(path) == "file":
            storage.put_file(path, key)
            return os.stat(path).st_size
        fd, archive = tempfile.mkstemp(prefix="raybeam-output-", suffix=".zip")
        os.close(fd)
        try:
            _zip_folder(path, archive)
            storage.put_file(archive, key)
            return os.path.getsize(archive)
        finally:
            os.unlink(archive)


_FIELDS = ("name", "url", "expires_in")


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class OutputFile(Mapping[str, Any]):
    """A saved output as `task.outputs()` lists it, with a freshly signed download link.

    It also reads as the task record's `{"name", "url", "expires_in"}` dict (`o["url"]`,
    `o.get("url")`, `dict(o)`), and equals that dict.

    >>> task.outputs()  # doctest: +SKIP
    [OutputFile(name='sum.txt', url='http://.../output/id/c339...', expires_in=3600)]
    """

    #: the stored file name
    name: str
    #: the download link: presigned on S3, else the HTTP API's `/output/id/...`
    url: str
    #: seconds the link stays valid from when it was signed
    expires_in: int

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self) == dict(other)

    def __hash__(self) -> int:
        return hash((self.name, self.url, self.expires_in))


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


def _output_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path of an output; a relative one is taken from the working directory now."""
    text = os.fspath(path)
    if not isinstance(text, str):
        raise InvalidOutputPath(f"an output path must be a str or os.PathLike[str], got {path!r}")
    if not text.strip():
        raise InvalidOutputPath(
            "an output path must not be empty; pass a file such as 'result.txt'"
        )
    if "\x00" in text:
        raise InvalidOutputPath(f"an output path must not contain NUL bytes: {text!r}")
    return Path(os.getcwd(), text)


def _readable_kind(path: Path) -> Literal["file", "folder"]:
    """Whether `path` is a readable regular file or folder (links followed); else a clear error.

    Anything else is refused before it is opened: reading a FIFO would wait for a writer and a
    device such as /dev/zero would stream forever.
    """
    shown = str(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise InvalidOutputPath(
                f"output path {shown!r} is a symbolic link to {os.readlink(path)!r}, which does "
                "not exist; write the file it points to, or pass the file itself"
            ) from None
        raise InvalidOutputPath(
            f"output file {shown!r} does not exist; write it before calling .save() (a relative "
            "path is read from the task's working directory when the Output is made)"
        ) from None
    except OSError as err:
        raise _unreadable(shown, err) from None
    if stat.S_ISDIR(mode):
        try:
            with os.scandir(path):
                pass
        except OSError as err:
            raise _unreadable(shown, err) from None
        return "folder"
    if not stat.S_ISREG(mode):
        raise InvalidOutputPath(
            f"output path {shown!r} is {_special_kind(mode)}, not a regular file or a folder; "
            "write the data to a file and save that, or use Output.from_bytes(name, data)"
        )
    try:
        # O_NONBLOCK: should a FIFO replace the file after the check, opening it does not wait
        os.close(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)))
    except OSError as err:
        raise _unreadable(shown, err) from None
    return "file"


def _unreadable(shown: str, err: OSError) -> InvalidOutputPath:
    return InvalidOutputPath(
        f"output path {shown!r} cannot be read by the task ({err.strerror or err}); make it "
        "readable by the user the Ray worker runs as, or copy it somewhere that is"
    )


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


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
    """The stored name: the path's own last part (a link's name, not its target's)."""
    base = path.name if path.name not in ("", "..") else Path(os.path.realpath(path)).name
    if not base:
        raise InvalidOutputPath(
            f"output path {str(path)!r} has no name to store it under; pass a file or a folder "
            "below the root, such as '/data/run1'"
        )
    name = _safe_name(base)
    return _safe_name(f"{name}.zip") if os.path.isdir(path) else name


def _component(value: str, what: str) -> str:
    if not value or value in (".", "..") or any(c in value for c in "/\\\x00"):
        raise InvalidOutputPath(f"cannot store outputs under the {what} {value!r}")
    return value


def _zip_folder(folder: Path, archive: str) -> None:
    """Zip `folder` into the file `archive`, one member at a time (never whole in memory).

    Links to files are followed. Links to folders are not (a loop would never end), and
    what is not a regular file (a FIFO, a socket, a device, a broken link) is left out with a
    warning; a file that cannot be read fails the save rather than leave a silent gap.
    """
    built = os.stat(archive)

    def refuse(err: OSError) -> None:
        raise _unreadable(str(err.filename or folder), err)

    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(folder, onerror=refuse):
            current = Path(dirpath)
            for linked in [d for d in dirnames if (current / d).is_symlink()]:
                logger.warning(
                    "left %s out of %s.zip: it links to a folder", current / linked, folder.name
                )
                dirnames.remove(linked)
            dirnames.sort()
            if current != folder and not dirnames and not filenames:
                zf.write(current, current.relative_to(folder).as_posix() + "/")
            for filename in sorted(filenames):
                file = current / filename
                try:
                    st = os.stat(file)
                except OSError as err:
                    logger.warning("left %s out of %s.zip: %s", file, folder.name, err.strerror)
                    continue
                if (st.st_dev, st.st_ino) == (built.st_dev, built.st_ino):
                    continue  # the archive itself, when the folder holds the temp folder
                if not stat.S_ISREG(st.st_mode):
                    logger.warning(
                        "left %s out of %s.zip: it is %s",
                        file,
                        folder.name,
                        _special_kind(st.st_mode),
                    )
                    continue
                try:
                    zf.write(file, file.relative_to(folder).as_posix())
                except OSError as err:
                    raise _unreadable(str(file), err) from None
