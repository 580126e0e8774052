"""Webhook endpoints, signing secrets, the delivery log and replay: the operations.

Functions take the session first and never commit: the request (or the job) owns the
transaction. An endpoint or message of another client is as absent as one that never was.
A redelivery or a recovery puts the message back to pending and defers its job in the
caller's transaction; the delivery itself is `app.webhooks.delivery`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import BadRequest, Conflict, NotFound, Unprocessable
from app.jobs import DELIVER_WEBHOOK, RECOVER_WEBHOOKS, WEBHOOK_PRIORITY, enqueue
from app.models import WebhookAttempt, WebhookClientSecret, WebhookEndpoint
from app.models import WebhookMessage as Message
from app.settings import Settings
from app.tasks.service import require_owned
from app.vocabulary import MessageStatus
from app.webhooks import signing
from app.webhooks.delivery import client_secret
from app.webhooks.schemas import EndpointCreate, EndpointUpdate
from app.webhooks.targets import check_webhook_url

# A pending message this long past due without a live job lost it (a crashed worker).
logger = logging.getLogger("edithook.webhooks")

LOST_AFTER_SECONDS = 60


def parse_id(value: str, what: str) -> uuid.UUID:
    """An id from the path; a malformed one names nothing, so it is a 404."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"No such {what}.") from None


async def create_endpoint(
    session: AsyncSession, client: str, body: EndpointCreate, settings: Settings
) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        client=client,
        url=check_webhook_url(settings, body.url, field="url"),
        event_types=_types(body.event_types),
        description=body.description,
        enabled=True,
        secret=signing.new_secret(),
    )
    session.add(endpoint)
    await session.flush()
    await session.refresh(endpoint)
    return endpoint


def _types(types: list[Any] | None) -> list[str] | None:
    return sorted({str(kind) for kind in types}) if types else None


async def list_endpoints(session: AsyncSession, client: str) -> list[WebhookEndpoint]:
    rows = await session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.client == client)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return list(rows)


async def get_endpoint(
    session: AsyncSession, client: str, endpoint_id: uuid.UUID, *, lock: bool = False
) -> WebhookEndpoint:
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id, WebhookEndpoint.client == client
    )
    endpoint = await session.scalar(query.with_for_update() if lock else query)
    if endpoint is None:
        raise NotFound("No such webhook endpoint.")
    return endpoint


async def update_endpoint(
    session: AsyncSession,
    client: str,
    endpoint_id: uuid.UUID,
    body: EndpointUpdate,
    settings: Settings,
) -> WebhookEndpoint:
    endpoint = await get_endpoint(session, client, endpoint_id, lock=True)
    given = body.model_fields_set
    if "url" in given:
        if body.url is None:
            raise Unprocessable(
                "The URL cannot be removed.",
                errors=[{"field": "url", "message": "must not be null", "code": "null"}],
            )
        endpoint.url = check_webhook_url(settings, body.url, field="url")
    if "event_types" in given:
        endpoint.event_types = _types(body.event_types)
    if "description" in given:
        endpoint.description = body.description
    if "enabled" in given:
        if body.enabled is None:
            raise Unprocessable(
                "`enabled` is true or false.",
                errors=[{"field": "enabled", "message": "must not be null", "code": "null"}],
            )
        endpoint.enabled = body.enabled
        if body.enabled:
            endpoint.disabled_reason = None
            endpoint.failing_since = None
        else:
            endpoint.disabled_reason = "disabled by the client"
    await session.flush()
    return endpoint


async def delete_endpoint(session: AsyncSession, client: str, endpoint_id: uuid.UUID) -> None:
    await session.delete(await get_endpoint(session, client, endpoint_id))


async def rotate_endpoint_secret(session: AsyncSession, client: str, endpoint_id: uuid.UUID) -> str:
    endpoint = await get_endpoint(session, client, endpoint_id, lock=True)
    return signing.rotate(endpoint, datetime.now(UTC))


async def get_client_secret(session: AsyncSession, client: str) -> str:
    return (await client_secret(session, client)).secret


async def rotate_client_secret(session: AsyncSession, client: str) -> str:
    await client_secret(session, client)
    holder = await session.scalar(
        select(WebhookClientSecret).where(WebhookClientSecret.client == client).with_for_update()
    )
    assert holder is not None
    return signing.rotate(holder, datetime.now(UTC))


async def with_attempts(
    session: AsyncSession, messages: list[Message]
) -> list[tuple[Message, list[WebhookAttempt]]]:
    """Each message with its attempts, oldest first (one query for all)."""
    attempts: dict[uuid.UUID, list[WebhookAttempt]] = defaultdict(list)
    if messages:
        rows = await session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.message_id.in_([m.id for m in messages]))
            .order_by(WebhookAttempt.id)
        )
        for attempt in rows:
            attempts[attempt.message_id].append(attempt)
    return [(message, attempts[message.id]) for message in messages]


async def task_messages(
    session: AsyncSession, client: str, task_id: uuid.UUID
) -> list[tuple[Message, list[WebhookAttempt]]]:
    """Every message about the client's task, oldest first."""
    await require_owned(session, client, task_id)
    rows = await session.scalars(
        select(Message)
        .where(Message.task_id == task_id, Message.client == client)
        .order_by(Message.created_at, Message.id)
    )
    return await with_attempts(session, list(rows))


async def endpoint_messages(
    session: AsyncSession,
    client: str,
    endpoint_id: uuid.UUID,
    *,
    status: MessageStatus | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[tuple[Message, list[WebhookAttempt]]], str | None]:
    """One page of the endpoint's messages, newest first, by keyset on (created_at, id)."""
    await get_endpoint(session, client, endpoint_id)
    query = select(Message).where(Message.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(Message.status == status)
    if cursor is not None:
        after = _decode_cursor(cursor)
        query = query.where(tuple_(Message.created_at, Message.id) < after)
    query = query.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit + 1)
    rows = list(await session.scalars(query))
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = _encode_cursor(last.created_at, last.id)
        rows = rows[:limit]
    return await with_attempts(session, rows), next_cursor


def _encode_cursor(created_at: datetime, message_id: uuid.UUID) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": str(message_id)}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(payload["c"]), uuid.UUID(payload["i"])
    except (binascii.Error, ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise BadRequest("The cursor is not one this API issued.") from exc


async def _requeue(session: AsyncSession, message: Message) -> None:
    """Back to pending, at the start of the schedule, with a new job (same message id)."""
    message.status = MessageStatus.PENDING
    message.round_attempts = 0
    message.next_attempt_at = datetime.now(UTC)
    message.last_error = None
    await enqueue(
        session,
        DELIVER_WEBHOOK,
        {"message_id": str(message.id)},
        lock=f"webhook:{message.id}",
        priority=WEBHOOK_PRIORITY,
    )


async def redeliver(
    session: AsyncSession, client: str, message_id: uuid.UUID
) -> tuple[Message, list[WebhookAttempt]]:
    """Send a delivered or failed message again, with the same id and the same body."""
    message = await session.scalar(
        select(Message).where(Message.id == message_id, Message.client == client).with_for_update()
    )
    if message is None:
        raise NotFound("No such webhook message.")
    if message.status == MessageStatus.PENDING:
        raise Conflict("The message is still being delivered; its next attempt is scheduled.")
    if message.endpoint_id is not None:
        endpoint = await get_endpoint(session, client, message.endpoint_id)
        if not endpoint.enabled:
            raise Conflict("The endpoint is disabled; enable it first (PATCH enabled: true).")
    await _requeue(session, message)
    await session.flush()
    return (await with_attempts(session, [message]))[0]


async def recover(
    session: AsyncSession, client: str, endpoint_id: uuid.UUID, since: datetime
) -> None:
    """Defer the job that redelivers every failed message of the endpoint since `since`."""
    endpoint = await get_endpoint(session, client, endpoint_id)
    if not endpoint.enabled:
        raise Conflict("The endpoint is disabled; enable it first (PATCH enabled: true).")
    await enqueue(
        session, RECOVER_WEBHOOKS, {"endpoint_id": str(endpoint_id), "since": since.isoformat()}
    )


async def redeliver_failed(session: AsyncSession, endpoint_id: uuid.UUID, since: datetime) -> int:
    """The recovery job's body: every failed message of the endpoint made since `since`."""
    rows = await session.scalars(
        select(Message)
        .where(
            Message.endpoint_id == endpoint_id,
            Message.status == MessageStatus.FAILED,
            Message.created_at >= since,
        )
        .with_for_update()
    )
    count = 0
    for message in rows:
        await _requeue(session, message)
        count += 1
    return count


# A message whose delivery job failed for good this many times (an error no retry cures:
# a crash, not a receiver's answer, which the schedule handles) is given up on.
CRASHES_BEFORE_GIVING_UP = 3

LOST = text(f"""
    SELECT m.id, (
        SELECT count(*) FROM procrastinate_jobs j
        WHERE j.task_name = :job AND j.status = 'failed'
          AND j.args->>'message_id' = m.id::text) AS crashed
    FROM webhook_messages m
    WHERE m.status = '{MessageStatus.PENDING.value}' AND m.next_attempt_at < :cutoff
      AND NOT EXISTS (
        SELECT 1 FROM procrastinate_jobs j
        WHERE j.task_name = :job AND j.status IN ('todo', 'doing')
          AND j.args->>'message_id' = m.id::text)
    LIMIT 500
""")  # noqa: S608 - an enum value


async def requeue_lost(session: AsyncSession) -> int:
    """Defer a job for each pending message that has none (its job failed or was lost);
    give up on one whose jobs have failed for good `CRASHES_BEFORE_GIVING_UP` times, which
    another job would only repeat (the worker's log says why each failed)."""
    cutoff = datetime.now(UTC).timestamp() - LOST_AFTER_SECONDS
    found = await session.execute(
        LOST, {"cutoff": datetime.fromtimestamp(cutoff, UTC), "job": DELIVER_WEBHOOK}
    )
    count = 0
    for message_id, crashed in found.all():
        if crashed >= CRASHES_BEFORE_GIVING_UP:
            logger.error(
                "webhook message %s given up: its delivery job failed %d times", message_id, crashed
            )
            await session.execute(
                update(Message)
                .where(Message.id == message_id, Message.status == MessageStatus.PENDING)
                .values(
                    status=MessageStatus.FAILED,
                    last_error=(
                        f"its delivery job failed {crashed} times without an answer to record;"
                        " the worker's log says why"
                    ),
                )
            )
            continue
        await enqueue(
            session,
            DELIVER_WEBHOOK,
            {"message_id": str(message_id)},
            lock=f"webhook:{message_id}",
            priority=WEBHOOK_PRIORITY,
        )
        count += 1
    return count
