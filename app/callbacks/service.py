"""Recording EvoLink's callbacks: every delivery becomes an event, at most one moves the task.

A terminal callback is first written without reading the task, judged against the state it
implies (in flight with the provider id it names; or already in the status it repeats);
everything else — and those too when the task is in another state or the direct pool is
unavailable — is read, judged and written by app.tasks.writer's loop.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError
from pydantic_core import from_json
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.callbacks.bodies import stored_body
from app.db import DirectUnavailable
from app.evolink.schemas import SCRUB, ProviderTask, storable_text
from app.security import scrub_token
from app.tasks import writer
from app.tasks.transitions import TaskState, Verdict, judge, terminal_guards
from app.tasks.writer import Direct, Event, Written
from app.vocabulary import EventKind, EventOutcome, TaskStatus

logger = logging.getLogger("edithook.callbacks")

# Request headers worth keeping with a callback; the rest say nothing about the delivery.
KEPT_HEADERS = ("content-type", "content-length", "user-agent", "x-forwarded-for", "x-request-id")


def chosen_headers(headers: Any, client_host: str | None) -> dict[str, str]:
    kept = {name: headers[name] for name in KEPT_HEADERS if name in headers}
    if client_host:
        kept["peer"] = client_host
    return kept


def parse_body(body: bytes, token: str | None = None) -> ProviderTask | str:
    """The task object a callback carries, or the reason it cannot be read.

    The parser is strict and bounded, so that no body costs more than reading it: nesting
    deeper than 200, integers longer than 4,300 digits (Python's own limit), NaN and
    Infinity (not JSON) and unpaired surrogates (not Unicode) are refused. A NUL or an
    overflowing number in a valid body is made storable by ProviderTask instead, and any
    form of `token` in its strings scrubbed.
    """
    try:
        document = from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        return storable_text(f"body is not JSON: {exc}")
    if not isinstance(document, dict):
        return "body is not a JSON object"
    try:
        return ProviderTask.model_validate(document, context={SCRUB: token})
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) or "body" for e in exc.errors())
        return storable_text(f"body is not a task object (bad or missing: {fields})")


def _without_token(body: bytes, token: str) -> bytes:
    """`body` with every form of `token` scrubbed; its other bytes, valid UTF-8 or not, kept."""
    text = body.decode("utf-8", errors="surrogateescape")
    scrubbed = scrub_token(text, token)
    return body if scrubbed is text else scrubbed.encode("utf-8", errors="surrogateescape")


async def record_callback(
    sessions: async_sessionmaker[AsyncSession],
    pool: AsyncConnectionPool | None,
    task_id: uuid.UUID,
    body: bytes | None,
    headers: dict[str, str],
    *,
    oversize_bytes: int | None = None,
    token: str | None = None,
) -> EventOutcome | None:
    """Record one delivery for `task_id`, apply it, and say what it did (the event's outcome);
    None when there is no such task.

    `body` is None when it was refused for its size (`oversize_bytes` says how large it was
    claimed or read to be); such a delivery and an unreadable one are recorded as rejected.
    With `pool`, a terminal callback first tries the one-statement path. Returns once the
    event and any transition are committed. No form of `token` (the callback URL's) is
    kept: the provider may quote its callback URL in an error.
    """
    if body is not None and token:
        body = _without_token(body, token)
    parsed = (
        parse_body(body, token)
        if body is not None
        else f"body over the limit ({oversize_bytes} bytes)"
    )
    raw = stored_body(body) if body is not None else None
    event = Event(EventKind.CALLBACK, body=raw, headers=headers)
    if isinstance(parsed, str):
        rejected = Verdict(EventOutcome.REJECTED, parsed)
        settled = await writer.settle_anywhere(pool, sessions, task_id, lambda _: rejected, event)
        return settled.outcome
    event = Event(EventKind.CALLBACK, parsed.status, raw, headers)
    if pool is not None:
        try:
            written = await settle_by_callback(pool, task_id, parsed, event)
        except DirectUnavailable as exc:
            logger.warning("callback for task %s goes through the engine: %s", task_id, exc)
        else:
            if written is not None and not written.exists:
                return None
            if written is not None and written.outcome is not None:
                return written.outcome
    when = writer.now()
    settled = await writer.settle_anywhere(
        pool, sessions, task_id, lambda state: judge(state, parsed, EventKind.CALLBACK, when), event
    )
    return settled.outcome


async def settle_by_callback(
    pool: AsyncConnectionPool, task_id: uuid.UUID, observed: ProviderTask, event: Event
) -> Written | None:
    """A terminal callback, written without reading the task: applied if it is in flight with
    the provider id the callback names, a duplicate if it already has the status repeated;
    nothing written otherwise. None, with nothing asked of the database, for any other
    message."""
    error_code = observed.error.code_str if observed.error else None
    guards = terminal_guards(
        observed.status, error_code, len(observed.results or []), EventKind.CALLBACK
    )
    if guards is None or not observed.id:
        return None
    applied_guard, repeated_guard = (
        dataclasses.replace(guard, provider_task_id=observed.id) for guard in guards
    )
    verdict = judge(
        TaskState(TaskStatus.PROCESSING, observed.id), observed, EventKind.CALLBACK, writer.now()
    )
    otherwise = (Verdict(EventOutcome.DUPLICATE), repeated_guard)
    return await writer.write(
        Direct(pool), task_id, verdict, applied_guard, event, otherwise=otherwise
    )
