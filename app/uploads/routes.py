"""Uploading input images (`POST /v1/uploads`), reading one back, and the signed link that
serves its bytes to EvoLink without a key (`GET /v1/uploads/{id}/content.{ext}`).

The upload's body is the one large body of the client API: the edge allows it up to
EDITHOOK_UPLOAD_MAX_BYTES (and the multipart framing around it) on this path only, and
refuses more while it streams; here the image itself is held to the limit exactly. It
arrives as multipart (field `file`, parsed by python-multipart through Starlette, which
spools a large part to a temporary file) or as the raw bytes with an image Content-Type.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from app.deps import PROBLEM, CallerDep, ResourcesDep, SessionDep, require_signed_link
from app.errors import (
    Gone,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from app.results.storage import StorageError, first_chunk, stream_from
from app.uploads import service
from app.uploads.images import ACCEPTED_TYPES, EXTENSIONS
from app.uploads.inputs import content_path
from app.uploads.schemas import UploadRead

logger = logging.getLogger("edithook.uploads")

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

UPLOADS_PATH = "/v1/uploads"
# What the edge allows past the image itself on this path: multipart boundaries and headers.
MULTIPART_SLACK_BYTES = 64 * 1024
CHUNK_BYTES = 64 * 1024
RAW_TYPES = (*ACCEPTED_TYPES, "application/octet-stream")

_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                    "additionalProperties": False,
                }
            },
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in RAW_TYPES},
        },
    }
}


def _media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


async def _bounded(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The chunks joined, refused (413) as soon as they pass `limit` bytes."""
    buffer = bytearray()
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) > limit:
            raise service.too_large(limit)
    return bytes(buffer)


async def _file_chunks(file: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await file.read(CHUNK_BYTES):
        yield chunk


async def read_image_body(request: Request, limit: int) -> tuple[bytes, str | None, str]:
    """The image bytes of an upload request, the type the caller declared for them, and
    where they were (`file` or `body`)."""
    media = _media_type(request.headers.get("content-type"))
    if media == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise Unprocessable(
                    "Send the image as the multipart field `file`.",
                    errors=[
                        {
                            "field": "file",
                            "message": "a file part named `file` is required",
                            "code": "missing",
                        }
                    ],
                )
            return await _bounded(_file_chunks(part), limit), part.content_type, "file"
    if media.startswith("image/") or media == "application/octet-stream":
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise service.too_large(limit, int(declared))
        return await _bounded(request.stream(), limit), media, "body"
    raise UnsupportedMediaType(
        "Send multipart/form-data with the image in the field `file`, or the image bytes "
        f"with its image Content-Type (got {media or 'none'})."
    )


@router.post(
    "",
    status_code=201,
    summary="Upload an input image",
    description=(
        "One PNG, JPEG or WebP image, 384–3072 px a side, as the multipart field `file` or "
        "as the raw body with its image Content-Type; at most EDITHOOK_UPLOAD_MAX_BYTES. "
        "Name its `id` in a task's `image_ids` until `expires_at`."
    ),
    openapi_extra=_REQUEST_BODY,
    responses={
        400: {"description": "The multipart body cannot be read.", **PROBLEM},
        413: {"description": "Over the upload size limit.", **PROBLEM},
        415: {"description": "Not a PNG, JPEG or WebP image.", **PROBLEM},
        422: {"description": "Undecodable, or sides outside 384–3072 px.", **PROBLEM},
    },
)
async def create_upload(
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    resources: ResourcesDep,
    response: Response,
) -> UploadRead:
    settings = resources.settings
    data, declared, field = await read_image_body(request, settings.upload_max_bytes)
    upload = await service.accept_upload(
        session, resources.storage, caller, data, declared, settings=settings, field=field
    )
    response.headers["Location"] = f"{UPLOADS_PATH}/{upload.id}"
    return UploadRead.model_validate(upload, from_attributes=True)


def _parse_upload_id(upload_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(upload_id)
    except ValueError:
        raise NotFound("No such upload.") from None


@router.get(
    "/{upload_id}",
    summary="Read an upload",
    responses={404: {"description": "No such upload for this client.", **PROBLEM}},
)
async def get_upload(upload_id: str, caller: CallerDep, session: SessionDep) -> UploadRead:
    upload = await service.get_upload(session, caller, _parse_upload_id(upload_id))
    return UploadRead.model_validate(upload, from_attributes=True)


@router.get(
    "/{upload_id}/content.{extension}",
    summary="An upload's bytes, through a signed link (no key)",
    description=(
        "What EvoLink fetches: valid only with the `expires` and `signature` edithook put "
        "in the link it sent, until `expires`."
    ),
    response_class=Response,
    responses={
        200: {"description": "The image.", "content": {"image/*": {}}},
        403: {"description": "`link-invalid` or `link-expired`.", **PROBLEM},
        404: {"description": "No such upload.", **PROBLEM},
        410: {"description": "Deleted after its retention.", **PROBLEM},
        503: {"description": "The storage could not be read.", **PROBLEM},
    },
)
async def get_upload_content(
    upload_id: str,
    extension: str,
    request: Request,
    session: SessionDep,
    resources: ResourcesDep,
    expires: str | None = None,
    signature: str | None = None,
) -> Response:
    path = request.url.path
    require_signed_link(
        resources,
        path,
        expires,
        signature,
        expired="The link has expired; a new task makes a new one.",
    )
    parsed = _parse_upload_id(upload_id)
    if extension not in EXTENSIONS or path != content_path(parsed, extension):
        raise NotFound("No such upload.")
    upload = await service.find_upload(session, parsed)
    if upload is None or not upload.storage_key.endswith(f".{extension}"):
        raise Gone("The upload has been deleted after its retention.")
    chunks = resources.storage.read(upload.storage_key)
    try:
        first = await first_chunk(chunks)
    except StorageError as exc:
        if not exc.retryable:
            raise Gone("The upload has been deleted after its retention.") from exc
        logger.warning("upload %s unreadable: %s", parsed, exc)
        raise ServiceUnavailable("The image cannot be read right now.") from exc
    remaining = max(0, int(expires or 0) - int(time.time()))
    headers = {
        "Content-Length": str(upload.size_bytes),
        "ETag": f'"{upload.sha256}"',
        "Cache-Control": f"private, max-age={remaining}",
        "X-Content-Type-Options": "nosniff",
    }
    return StreamingResponse(
        stream_from(first, chunks), headers=headers, media_type=upload.content_type
    )
