"""Accepting an uploaded image, finding a client's uploads, and checking a task's `image_ids`.

Functions take the session first and never commit: the request owns the transaction. An
upload's bytes are judged (`app.uploads.images`) and stored before the session is first
used, so no database connection is held across the decode or the storage write. A stored
object whose row is then not committed is left for the retention job's look for orphans.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import (
    InvalidImage,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from app.models import Upload
from app.results.storage import ResultStorage, StorageError
from app.settings import Settings
from app.uploads.images import ImageRefused, Refusal, inspect_image

UPLOAD_PREFIX = "uploads/"


def storage_key(upload_id: uuid.UUID, extension: str) -> str:
    return f"{UPLOAD_PREFIX}{upload_id}.{extension}"


def too_large(limit: int, size: int | None = None) -> PayloadTooLarge:
    """The 413 for an upload over EDITHOOK_UPLOAD_MAX_BYTES."""
    mib = limit / (1024 * 1024)
    got = f" ({size} bytes)" if size is not None else ""
    return PayloadTooLarge(
        f"The image is larger than the upload limit of {limit} bytes ({mib:g} MiB){got}."
    )


async def accept_upload(
    session: AsyncSession,
    storage: ResultStorage,
    client: str,
    data: bytes,
    declared_type: str | None,
    *,
    settings: Settings,
    field: str = "file",
) -> Upload:
    """Judge `data` as an input image, store it, and record it as `client`'s upload.

    Raises PayloadTooLarge (413) over EDITHOOK_UPLOAD_MAX_BYTES, UnsupportedMediaType (415)
    for anything but PNG, JPEG or WebP, InvalidImage (422) for bytes that do not decode or
    whose sides are outside 384 to 3072 px, ServiceUnavailable (503) when storage fails.
    `declared_type` (the caller's Content-Type) only words a refusal; the bytes decide.
    `field` names where the image was in the request, in a 422's `errors`.
    """
    if len(data) > settings.upload_max_bytes:
        raise too_large(settings.upload_max_bytes, len(data))
    if not data:
        raise _invalid(field, "The upload is empty.", "empty")
    try:
        info = await asyncio.to_thread(inspect_image, data, declared_type)
    except ImageRefused as exc:
        if exc.kind == Refusal.TYPE:
            raise UnsupportedMediaType(exc.message) from None
        raise _invalid(field, exc.message, exc.kind.value) from None
    upload_id = uuid.uuid4()
    key = storage_key(upload_id, info.extension)
    try:
        await storage.put(key, data)
    except StorageError as exc:
        raise ServiceUnavailable("The image could not be stored right now; retry.") from exc
    statement = (
        insert(Upload)
        .values(
            id=upload_id,
            client=client,
            content_type=info.content_type,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            width=info.width,
            height=info.height,
            storage_key=key,
            expires_at=func.clock_timestamp() + timedelta(hours=settings.upload_retention_hours),
        )
        .returning(Upload)
    )
    return (await session.execute(statement)).scalar_one()


def _invalid(field: str, message: str, code: str) -> InvalidImage:
    return InvalidImage(message, errors=[{"field": field, "message": message, "code": code}])


async def get_upload(session: AsyncSession, client: str, upload_id: uuid.UUID) -> Upload:
    """The client's upload, while kept; another client's is as absent as none."""
    upload = await session.scalar(
        select(Upload).where(
            Upload.id == upload_id, Upload.client == client, Upload.expires_at > func.now()
        )
    )
    if upload is None:
        raise NotFound("No such upload.")
    return upload


async def find_upload(session: AsyncSession, upload_id: uuid.UUID) -> Upload | None:
    """The upload, whoever owns it, while kept: for a signed link, which is its own proof."""
    upload: Upload | None = await session.scalar(
        select(Upload).where(Upload.id == upload_id, Upload.expires_at > func.now())
    )
    return upload


async def require_usable(
    session: AsyncSession, client: str, image_ids: Sequence[uuid.UUID]
) -> None:
    """Unprocessable (422), naming each entry, unless every id is an upload of `client` that
    is still kept. Nothing is stored when it raises: the caller's transaction rolls back."""
    if not image_ids:
        return
    kept = set(
        (
            await session.scalars(
                select(Upload.id).where(
                    Upload.id.in_(set(image_ids)),
                    Upload.client == client,
                    Upload.expires_at > func.now(),
                )
            )
        ).all()
    )
    missing = [
        (index, upload_id) for index, upload_id in enumerate(image_ids) if upload_id not in kept
    ]
    if missing:
        raise Unprocessable(
            "Unknown upload id(s): " + ", ".join(str(upload_id) for _, upload_id in missing) + ".",
            errors=[
                {
                    "field": f"image_ids[{index}]",
                    "message": (
                        f"no upload {upload_id} of this client: unknown, another client's, "
                        "or deleted after its retention"
                    ),
                    "code": "unknown_upload",
                }
                for index, upload_id in missing
            ],
        )
