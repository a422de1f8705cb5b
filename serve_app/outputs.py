"""`GET /output/id/{output_id}`: output files of storage that cannot presign, by signed link."""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import Iterator
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from raybeam.storage import Storage, storage_from_settings
from serve_app.errors import ApiError
from serve_app.registry import registry_of
from serve_app.schemas import errors

CHUNK = 1 << 20

router = APIRouter(tags=["outputs"])


@router.get(
    "/output/id/{output_id}",
    response_class=StreamingResponse,
    responses={
        200: {"description": "the file", "content": {"application/octet-stream": {}}},
        **errors(403, 404),
    },
    summary="Download an output by its signed link",
)
async def download(
    request: Request, output_id: str, expires: str = "", signature: str = ""
) -> StreamingResponse:
    storage = await asyncio.to_thread(storage_from_settings)
    if not await asyncio.to_thread(storage.verify_local_link, output_id, expires, signature):
        raise ApiError(
            403, "Forbidden", "the link is expired or its signature is wrong; ask for a fresh one"
        )
    # the registry knows where each output is, so no listing of storage (one stat)
    known: str | None = await registry_of(request).call("output_key", output_id)
    parts = known.split("/") if known else []
    path = "/".join((parts[1], parts[2], parts[4])) if len(parts) == 5 else None
    key = await asyncio.to_thread(storage.find_output, output_id, path) if path else None
    if key is None:
        raise ApiError(404, "OutputNotFound", f"no output with id {output_id!r}")
    size = await asyncio.to_thread(storage.size, key)
    name = key.rsplit("/", 1)[-1]
    return StreamingResponse(
        _chunks(storage, key),
        media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
        headers={"Content-Disposition": disposition(name), "Content-Length": str(size)},
    )


def _chunks(storage: Storage, key: str) -> Iterator[bytes]:
    # a plain iterator: Starlette runs it in a thread, one chunk in memory at a time
    with storage.open(key) as f:
        while chunk := f.read(CHUNK):
            yield chunk


def disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the exact one in RFC 5987 form."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
