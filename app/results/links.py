"""The signed, expiring `url` of a stored result: what `POST /v1/images/edits` answers with.

A caller of the OpenAI-compatible route fetches its images without a key, as it would from
OpenAI. With S3, GCS or Azure storage the link is the object store's own presigned GET (the
bytes never pass through edithook); otherwise it is `EDITHOOK_PUBLIC_BASE_URL` +
`/v1/results/{task_id}/{index}/content.{ext}`, signed with `app.links` and served by
`app.results.routes` without a key while the signature is valid. Either way it stops
working `EDITHOOK_RESULT_URL_TTL_SECONDS` (an hour, as OpenAI's own) after it was made.
"""

from __future__ import annotations

import time
import uuid

from app import links
from app.models import TaskResult
from app.results.storage import ResultStorage

RESULT_LINK_PREFIX = "/v1/results"


def content_path(task_id: uuid.UUID | str, index: int | str, extension: str) -> str:
    """The path edithook serves a stored result at, to a signed link."""
    return f"{RESULT_LINK_PREFIX}/{task_id}/{index}/content.{extension}"


def extension_of(result: TaskResult) -> str:
    """The stored object's extension (`tasks/<id>/<index>.<ext>`)."""
    key = result.storage_key or ""
    return key.rsplit(".", 1)[-1] if "." in key.rsplit("/", 1)[-1] else "bin"


class ResultLinks:
    """Makes the links to stored results; one per request of the OpenAI-compatible route."""

    def __init__(
        self, storage: ResultStorage, *, public_base_url: str, key: bytes, ttl_seconds: int
    ) -> None:
        self.storage = storage
        self.public_base_url = public_base_url.rstrip("/")
        self.key = key
        self.ttl_seconds = ttl_seconds

    async def url(self, result: TaskResult) -> str:
        """A link to `result`'s stored bytes that needs no key, valid for the TTL from now."""
        assert result.storage_key is not None, "only stored results have links"
        if self.storage.can_sign:
            return await self.storage.signed_get(result.storage_key, self.ttl_seconds)
        expires = int(time.time()) + self.ttl_seconds
        path = content_path(result.task_id, result.index, extension_of(result))
        return self.public_base_url + links.sign(self.key, path, expires)
