"""The links EvoLink fetches a task's uploads by, made when the task is submitted.

A task stores the ids its client named (`request.image_ids`), never a link: a link is made
by the submission job, just before the create is sent, so it is valid for its whole TTL
(`EDITHOOK_INPUT_URL_TTL_SECONDS`) from the moment EvoLink first hears of it, however long
the task waited in the queue. The create's `image_urls` are the client's own URLs first,
then one link per upload, in the order given.

With S3, GCS or Azure storage the link is the object store's own presigned GET; otherwise
it is `EDITHOOK_PUBLIC_BASE_URL` + `/v1/uploads/{id}/content.{ext}` signed with `app.links`,
which edithook serves without a key while the signature is valid
(`app.uploads.routes`). An upload that is gone by submission time (deleted after its
retention) fails the task — nothing is sent, nothing is charged — with the error code
`input_unavailable`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import links
from app.db import transaction
from app.models import Upload
from app.results.storage import ResultStorage
from app.settings import Settings
from app.tasks import writer
from app.tasks.transitions import TaskState, Verdict, fail
from app.tasks.writer import Event
from app.vocabulary import EventKind, EventOutcome, TaskStatus

INPUT_UNAVAILABLE = "input_unavailable"


def content_path(upload_id: uuid.UUID | str, extension: str) -> str:
    """The path edithook serves an upload's bytes at, to a signed link."""
    return f"/v1/uploads/{upload_id}/content.{extension}"


class InputUnavailable(Exception):
    """An upload a task names can no longer be sent (deleted after its retention)."""


class InputLinks:
    """Makes the URLs EvoLink fetches uploads by; held by the worker's submit job."""

    def __init__(
        self, storage: ResultStorage, *, public_base_url: str, key: bytes, ttl_seconds: int
    ) -> None:
        self.storage = storage
        self.public_base_url = public_base_url.rstrip("/")
        self.key = key
        self.ttl_seconds = ttl_seconds

    @classmethod
    def from_settings(cls, settings: Settings, storage: ResultStorage) -> InputLinks:
        return cls(
            storage,
            public_base_url=settings.public_base_url,
            key=links.link_key(settings.callback_secret.get_secret_value()),
            ttl_seconds=settings.input_url_ttl_seconds,
        )

    async def url_for(self, upload_id: uuid.UUID, storage_key: str, extension: str) -> str:
        """A link valid for the TTL from now: presigned by the store when it can, else ours."""
        if self.storage.can_sign:
            return await self.storage.signed_get(storage_key, self.ttl_seconds)
        expires = int(time.time()) + self.ttl_seconds
        return self.public_base_url + links.sign(
            self.key, content_path(upload_id, extension), expires
        )

    async def provider_request(
        self, sessions: async_sessionmaker[AsyncSession], stored: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The stored request as EvoLink takes it: `image_ids` replaced by links appended to
        `image_urls`. Raises InputUnavailable naming an upload that is gone."""
        request = {key: value for key, value in stored.items() if key != "image_ids"}
        ids = [uuid.UUID(str(value)) for value in stored.get("image_ids") or ()]
        if not ids:
            return request
        uploads = await _kept(sessions, ids)
        urls = list(request.get("image_urls") or ())
        for upload_id in ids:
            upload = uploads.get(upload_id)
            if upload is None:
                raise InputUnavailable(
                    f"upload {upload_id} is gone (deleted after its retention) "
                    "before the task could be submitted"
                )
            extension = upload.storage_key.rsplit(".", 1)[-1]
            urls.append(await self.url_for(upload_id, upload.storage_key, extension))
        request["image_urls"] = urls
        return request


async def _kept(
    sessions: async_sessionmaker[AsyncSession], ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Upload]:
    async with transaction(sessions) as session:
        rows = await session.scalars(
            select(Upload).where(Upload.id.in_(set(ids)), Upload.expires_at > func.now())
        )
        return {upload.id: upload for upload in rows}


def unavailable_input(state: TaskState, reason: str, now: Any) -> Verdict:
    """A claimed task whose inputs cannot be sent fails, by edithook's own decision; in any
    other state (a cancel got there first) the attempt is only recorded."""
    verdict = Verdict(EventOutcome.ERROR, reason)
    if state.status != TaskStatus.SUBMITTING:
        return verdict
    return fail(verdict, EventKind.SYSTEM, INPUT_UNAVAILABLE, reason, now)


async def record_unavailable(
    pool: AsyncConnectionPool,
    sessions: async_sessionmaker[AsyncSession],
    task_id: uuid.UUID,
    exc: InputUnavailable,
) -> None:
    """Fail the claimed task: nothing was sent to EvoLink."""
    when = writer.now()
    reason = str(exc)
    await writer.settle_anywhere(
        pool,
        sessions,
        task_id,
        lambda state: unavailable_input(state, reason, when),
        Event(EventKind.SYSTEM),
    )
