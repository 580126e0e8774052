"""Delivering one webhook message: render it once, sign it, POST it, record the attempt.

`deliver` is a job body (`app.webhooks.jobs`): it owns its short transactions and holds
none across the POST. It is safe to run twice — a worker killed mid-delivery runs it again
and the receiver may get the message twice, always with the same `webhook-id` (at least
once; exactly once for a receiver that deduplicates on it). A message that is no longer
pending, or whose next attempt is not due (another job has it), is left alone.

What an attempt's answer does:

- any 2xx: delivered; the endpoint is no longer failing;
- 410 Gone: the endpoint is disabled (a task's own URL is given up on); the message fails;
- anything else (3xx included: redirects are not followed), or no answer: another attempt
  after the next delay of the schedule, with jitter — or after `Retry-After` on a 429 or
  503 — until the schedule is spent, then the message fails. An endpoint failing without
  a single success for `DISABLE_AFTER` is disabled, with its reason.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import transaction
from app.models import TaskResult, WebhookAttempt, WebhookClientSecret, WebhookEndpoint
from app.models import WebhookMessage as Message
from app.models.webhook import Secrets
from app.tasks.schemas import ResultRead, TaskRead
from app.tasks.service import get_task
from app.vocabulary import MessageStatus
from app.webhooks import signing
from app.webhooks.client import Answer, post
from app.webhooks.targets import Rule

DISABLE_AFTER: Final = timedelta(days=5)
JITTER: Final = 0.1
# A Retry-After is honoured up to this; a longer one waits this long.
MAX_RETRY_AFTER: Final = 24 * 3600.0
# A job that runs this much before its message is due belongs to another chain of attempts.
EARLY: Final = timedelta(seconds=1)


@dataclass(frozen=True)
class Config:
    """How deliveries are made: where they may go, when they are retried, how long they wait."""

    rule: Rule
    schedule: list[float]
    timeout: float


@dataclass(frozen=True)
class _Send:
    message_id: str
    url: str
    body: str
    keys: list[str]
    endpoint_id: uuid.UUID | None


async def render(session: AsyncSession, message: Message, task_id: uuid.UUID) -> str:
    """The body of a message about task `task_id`: `{"type", "timestamp", "data"}`, `data`
    the task as `GET /v1/tasks/{id}` shows it with its `results` as
    `GET /v1/tasks/{id}/results` lists them."""
    view = await get_task(session, message.client, task_id)
    rows = await session.scalars(
        select(TaskResult).where(TaskResult.task_id == task_id).order_by(TaskResult.index)
    )
    data: dict[str, Any] = TaskRead.model_validate(view, from_attributes=True).model_dump(
        mode="json"
    )
    data["results"] = [
        ResultRead.model_validate(row, from_attributes=True).model_dump(mode="json") for row in rows
    ]
    payload = {
        "type": message.type.value,
        "timestamp": message.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


async def deliver(
    sessions: async_sessionmaker[AsyncSession],
    http: httpx.AsyncClient,
    config: Config,
    message_id: uuid.UUID,
) -> float | None:
    """Make one attempt at message `message_id` if it is due; the seconds until the next
    attempt, or None when this job has nothing more to do."""
    send = await _prepare(sessions, message_id)
    if send is None:
        return None
    now = datetime.now(UTC)
    headers = signing.headers(send.message_id, send.body, send.keys, now)
    answer = await post(
        http, config.rule, send.url, send.body.encode(), headers, seconds=config.timeout
    )
    return await _record(sessions, config, message_id, send, answer)


async def _prepare(
    sessions: async_sessionmaker[AsyncSession], message_id: uuid.UUID
) -> _Send | None:
    async with transaction(sessions) as session:
        message = await session.get(Message, message_id, with_for_update=True)
        now = datetime.now(UTC)
        if message is None or message.status != MessageStatus.PENDING:
            return None
        if message.next_attempt_at > now + EARLY:
            return None
        if message.endpoint_id is not None:
            endpoint = await session.get(WebhookEndpoint, message.endpoint_id)
            if endpoint is None or not endpoint.enabled:
                message.status = MessageStatus.FAILED
                message.last_error = "the endpoint is disabled"
                return None
            url, keys = endpoint.url, _keys(endpoint, now)
        else:
            assert message.url is not None  # a check constraint: one recipient
            url, keys = message.url, _keys(await client_secret(session, message.client), now)
        if message.payload is None:
            if message.task_id is None:
                # A client's message is made with its payload; without one there is nothing
                # to send.
                message.status = MessageStatus.FAILED
                message.last_error = "the message has no payload and no task to render"
                return None
            # Rendered once, at the first attempt, and kept: every retry and redelivery
            # sends these same bytes.
            message.payload = await render(session, message, message.task_id)
        return _Send(str(message.id), url, message.payload, keys, message.endpoint_id)


def _keys(holder: Secrets, now: datetime) -> list[str]:
    return signing.signing_secrets(
        holder.secret, holder.previous_secret, holder.previous_until, now
    )


async def client_secret(session: AsyncSession, client: str) -> WebhookClientSecret:
    """The client's signing secret, made on first use."""
    await session.execute(
        insert(WebhookClientSecret)
        .values(client=client, secret=signing.new_secret())
        .on_conflict_do_nothing(index_elements=["client"])
    )
    found = await session.get(WebhookClientSecret, client)
    assert found is not None
    return found


async def _record(
    sessions: async_sessionmaker[AsyncSession],
    config: Config,
    message_id: uuid.UUID,
    send: _Send,
    answer: Answer,
) -> float | None:
    """Record the attempt and what it does to the message and its endpoint; the seconds
    until the next attempt, or None when there is none."""
    if answer.success:
        await _record_success(sessions, message_id, send, answer)
        return None
    async with transaction(sessions) as session:
        message = await session.get(Message, message_id, with_for_update=True)
        if message is None:
            return None  # deleted with its endpoint or task meanwhile
        endpoint = (
            await session.get(WebhookEndpoint, send.endpoint_id, with_for_update=True)
            if send.endpoint_id is not None
            else None
        )
        now = datetime.now(UTC)
        message.round_attempts += 1
        message.last_error = answer.error or f"HTTP {answer.status_code}"
        delay = _next_delay(config, message.round_attempts, answer)
        if answer.status_code == 410:
            delay = None
            if endpoint is not None:
                _disable(endpoint, f"answered 410 Gone at {now.isoformat()}")
        elif endpoint is not None:
            endpoint.failing_since = endpoint.failing_since or now
            if now - endpoint.failing_since >= DISABLE_AFTER:
                since = endpoint.failing_since.isoformat()
                _disable(endpoint, f"failing without a success since {since}")
                delay = None
        if delay is None:
            message.status = MessageStatus.FAILED
            outcome = "disabled" if endpoint is not None and not endpoint.enabled else "failed"
        else:
            message.next_attempt_at = now + timedelta(seconds=delay)
            outcome = "retrying"
        session.add(
            WebhookAttempt(
                message_id=message_id,
                url=send.url,
                attempted_at=now,
                status_code=answer.status_code,
                error=answer.error,
                latency_ms=answer.latency_ms,
                response_body=answer.body,
                outcome=outcome,
            )
        )
    return delay


# The common case in one statement: the message delivered, its endpoint no longer failing,
# the attempt recorded. Nothing is written if the message is gone (deleted meanwhile).
DELIVERED = text(f"""
WITH message AS (
    UPDATE webhook_messages
    SET status = '{MessageStatus.DELIVERED.value}', delivered_at = :now, last_error = NULL,
        round_attempts = round_attempts + 1
    WHERE id = :message_id
    RETURNING id, endpoint_id
), endpoint AS (
    UPDATE webhook_endpoints e SET failing_since = NULL
    FROM message WHERE e.id = message.endpoint_id AND e.failing_since IS NOT NULL
    RETURNING e.id
)
INSERT INTO webhook_attempts
    (message_id, url, attempted_at, status_code, error, latency_ms, response_body, outcome)
SELECT message.id, :url, :now, :status_code, NULL, :latency_ms, :response_body,
       '{MessageStatus.DELIVERED.value}'
FROM message
""")  # noqa: S608 - enum values only


async def _record_success(
    sessions: async_sessionmaker[AsyncSession], message_id: uuid.UUID, send: _Send, answer: Answer
) -> None:
    async with transaction(sessions) as session:
        await session.execute(
            DELIVERED,
            {
                "message_id": message_id,
                "now": datetime.now(UTC),
                "url": send.url,
                "status_code": answer.status_code,
                "latency_ms": answer.latency_ms,
                "response_body": answer.body,
            },
        )


def _disable(endpoint: WebhookEndpoint, reason: str) -> None:
    endpoint.enabled = False
    endpoint.disabled_reason = reason


def _next_delay(config: Config, attempts: int, answer: Answer) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None when spent."""
    if attempts > len(config.schedule):
        return None
    if answer.status_code in (429, 503) and answer.retry_after:
        honoured = retry_after_seconds(answer.retry_after)
        if honoured is not None:
            return min(MAX_RETRY_AFTER, honoured)
    delay = config.schedule[attempts - 1]
    return delay * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - not a secret


def retry_after_seconds(value: str) -> float | None:
    """A `Retry-After` in seconds (a number of seconds or an HTTP date); None if unreadable."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
