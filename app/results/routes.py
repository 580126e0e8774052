"""A task's result images: the list (`GET /v1/tasks/{task_id}/results`), each stored image
(`GET /v1/tasks/{task_id}/results/{index}`), and the same bytes through a signed link that
needs no key (`GET /v1/results/{task_id}/{index}/content.{ext}`, `app.results.links`)."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import (
    NOT_FOUND,
    PROBLEM,
    CallerDep,
    ResourcesDep,
    SessionDep,
    parse_task_id,
    require_signed_link,
)
from app.errors import Conflict, Gone, NotFound, ServiceUnavailable
from app.models import TaskResult
from app.results import service
from app.results.links import RESULT_LINK_PREFIX, content_path, extension_of
from app.results.storage import ResultStorage, StorageError, first_chunk, stream_from
from app.tasks.schemas import ResultList, ResultRead
from app.vocabulary import ResultStatus

logger = logging.getLogger("edithook.results")

router = APIRouter(prefix="/v1/tasks", tags=["results"])
# The signed links, outside `/v1/tasks`: they need no key.
links_router = APIRouter(prefix=RESULT_LINK_PREFIX, tags=["results"])

# Stored bytes never change under a key: a client may keep them for as long as it likes.
CACHE_CONTROL = "private, max-age=31536000, immutable"
PENDING_RETRY_SECONDS = 5

_MAX_INDEX = 2**31 - 1


def _parse(task_id: str, index: str) -> tuple[uuid.UUID, int]:
    """Path values as typed ids; anything malformed names nothing, so it is a 404."""
    parsed = parse_task_id(task_id)
    # Bounded so that a huge number is a 404 here rather than an overflow in the database.
    if not index.isascii() or not index.isdigit() or int(index) > _MAX_INDEX:
        raise NotFound(f"The task has no result {index!r}.")
    return parsed, int(index)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` value matches `etag`, by weak comparison (RFC 9110 §13.1.2)."""
    if if_none_match is None:
        return False
    candidates = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in candidates)


@router.get("/{task_id}/results", summary="List a task's result images", responses=NOT_FOUND)
async def list_results(task_id: str, caller: CallerDep, session: SessionDep) -> ResultList:
    parsed = parse_task_id(task_id)
    results = await service.list_results(session, caller, parsed)
    return ResultList(
        task_id=parsed,
        all_stored=bool(results) and all(r.status == ResultStatus.STORED for r in results),
        items=[ResultRead.model_validate(result, from_attributes=True) for result in results],
    )


@router.get(
    "/{task_id}/results/{index}",
    summary="Download a stored result image",
    description=(
        "The image bytes from edithook's own storage, with an `ETag` (its SHA-256) for "
        "conditional requests. A result not stored yet is 409 with `Retry-After`; one that "
        "could not be copied is 410 with the reason."
    ),
    response_class=Response,
    responses={
        200: {"description": "The image.", "content": {"image/*": {}}},
        304: {"description": "`If-None-Match` matched; no body."},
        404: {"description": "No such task for this client, or no such result.", **PROBLEM},
        409: {
            "description": "Not stored yet; retry after `Retry-After` seconds.",
            "headers": {"Retry-After": {"schema": {"type": "string"}, "required": True}},
            **PROBLEM,
        },
        410: {"description": "The image could not be copied; `detail` says why.", **PROBLEM},
        503: {"description": "The storage could not be read.", **PROBLEM},
    },
)
async def get_result_image(
    task_id: str,
    index: str,
    caller: CallerDep,
    session: SessionDep,
    resources: ResourcesDep,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    parsed_id, parsed_index = _parse(task_id, index)
    result = await service.find_result(session, caller, parsed_id, parsed_index)
    return await _serve(result, resources.storage, if_none_match)


async def _serve(result: TaskResult, storage: ResultStorage, if_none_match: str | None) -> Response:
    """A result row's image: 409 pending, 410 failed, 304 on a matching ETag, else the bytes."""
    if result.status == ResultStatus.PENDING:
        raise Conflict(
            "The result is not stored yet.",
            headers={"Retry-After": str(PENDING_RETRY_SECONDS)},
        )
    if result.status == ResultStatus.FAILED:
        raise Gone(result.error or "The result could not be copied.")
    if result.storage_key is None or result.sha256 is None:
        # A stored row always has both; their absence is a broken row, not a client error.
        raise ServiceUnavailable("The stored result is incomplete.")

    etag = f'"{result.sha256}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)

    chunks = storage.read(result.storage_key)
    try:
        first = await first_chunk(chunks)
    except StorageError as exc:
        logger.warning("result %s/%s unreadable: %s", result.task_id, result.index, exc)
        raise ServiceUnavailable("The stored image cannot be read right now.") from exc
    if result.size_bytes is not None:
        headers["Content-Length"] = str(result.size_bytes)
    headers["X-Content-Type-Options"] = "nosniff"
    return StreamingResponse(
        stream_from(first, chunks),
        headers=headers,
        media_type=result.content_type or "application/octet-stream",
    )


@links_router.get(
    "/{task_id}/{index}/content.{extension}",
    summary="A stored result image, through a signed link (no key)",
    description=(
        "The `url` `POST /v1/images/edits` answers with: valid only with the `expires` and "
        "`signature` edithook put in it, until `expires`. Otherwise as "
        "`GET /v1/tasks/{task_id}/results/{index}`."
    ),
    response_class=Response,
    responses={
        200: {"description": "The image.", "content": {"image/*": {}}},
        304: {"description": "`If-None-Match` matched; no body."},
        403: {"description": "`link-invalid` or `link-expired`.", **PROBLEM},
        404: {"description": "No such result.", **PROBLEM},
        410: {"description": "The image could not be copied; `detail` says why.", **PROBLEM},
        503: {"description": "The storage could not be read.", **PROBLEM},
    },
)
async def get_linked_result(
    task_id: str,
    index: str,
    extension: str,
    request: Request,
    session: SessionDep,
    resources: ResourcesDep,
    expires: str | None = None,
    signature: str | None = None,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    path = request.url.path
    require_signed_link(
        resources,
        path,
        expires,
        signature,
        expired="The link has expired; read the result with a key instead.",
    )
    parsed_id, parsed_index = _parse(task_id, index)
    if path != content_path(parsed_id, parsed_index, extension):
        raise NotFound(f"The task has no result {index!r}.")
    # The signature is the caller's proof: whoever holds the link may read this one image.
    result = await service.find_linked_result(session, parsed_id, parsed_index)
    if result is None or extension_of(result) != extension:
        raise NotFound(f"The task has no result {index!r}.")
    return await _serve(result, resources.storage, if_none_match)
