"""The endpoint EvoLink calls when a task ends."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.callbacks.service import chosen_headers, record_callback
from app.errors import BadRequest, BodyTooLarge, NotFound, PayloadTooLarge
from app.resources import Resources
from app.security import token_matches
from app.vocabulary import EventOutcome

router = APIRouter(tags=["callbacks"])


async def read_limited(request: Request) -> tuple[bytes | None, int]:
    """The body, or None with its size once it is over the route's limit.

    The limit is the edge's (`app.edge`): the body's reader raises BodyTooLarge at once for a
    declared length over it, or as soon as a streamed body passes it.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            chunks.append(chunk)
    except BodyTooLarge as exc:
        return None, exc.size
    return b"".join(chunks), size


@router.post(
    "/v1/callbacks/evolink/{task_id}/{token}",
    summary="Receive an EvoLink task callback",
    description=(
        "Called by EvoLink at a task's terminal state, at the URL edithook gave it. Answers "
        "2xx once the delivery is recorded; 404 for an unknown task or wrong token; 413 for a "
        "body over the limit; 400 for an unreadable body (recorded); 503 when the delivery "
        "could not be recorded, so that EvoLink retries."
    ),
    responses={
        200: {
            "content": {"application/json": {"example": {"received": True, "outcome": "applied"}}}
        },
        400: {"description": "The body is not a task object; the attempt is recorded."},
        404: {"description": "No such task, or the token is wrong."},
        413: {"description": "The body is over the limit."},
        503: {"description": "The delivery could not be recorded; retry."},
    },
)
async def receive_evolink_callback(task_id: str, token: str, request: Request) -> Response:
    # The resources straight from the app, not through a dependency: this is the hot path.
    resources: Resources = request.app.state.resources
    try:
        parsed_id = uuid.UUID(task_id)
    except ValueError:
        raise NotFound() from None
    if not token_matches(resources.settings.callback_secret.get_secret_value(), parsed_id, token):
        raise NotFound()
    body, size = await read_limited(request)
    headers = chosen_headers(request.headers, request.client.host if request.client else None)
    # A database that cannot be reached is a 503 with Retry-After, as on every route
    # (app.errors); any other status but 2xx has EvoLink deliver again, too.
    outcome = await record_callback(
        resources.sessions,
        resources.pool,
        parsed_id,
        body,
        headers,
        oversize_bytes=None if body is not None else size,
        token=token,
    )
    if outcome is None:
        raise NotFound()
    if body is None:
        raise PayloadTooLarge(
            f"The body is over {resources.settings.callback_max_body_bytes} bytes."
        )
    if outcome == EventOutcome.REJECTED:
        raise BadRequest("The body is not an EvoLink task object; the attempt is recorded.")
    return JSONResponse({"received": True, "outcome": outcome.value})
