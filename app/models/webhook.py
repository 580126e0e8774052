"""Where callers are told about their tasks: endpoints, signing secrets, messages, attempts.

A message is one event for one recipient — a registered endpoint, or the task's own
`webhook_url` — and its id is the `webhook-id` every attempt and redelivery carries. Its
payload is rendered once, at the first attempt, and kept: retries send identical bytes.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models.task import Word, _one_of
from app.vocabulary import MessageStatus, WebhookType


class Secrets:
    """The signing secret columns shared by endpoints and clients: the current secret, and
    after a rotation the previous one, which keeps signing until `previous_until`."""

    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Secrets, Base):
    """A URL a client registered to hear about its tasks (all events, or `event_types`)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    client: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    # None: every type.
    event_types: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    description: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # Set by the first failed attempt after a success (or ever); cleared by a success.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )

    __table_args__ = (Index("ix_webhook_endpoints_client", "client", "created_at"),)


class WebhookClientSecret(Secrets, Base):
    """A client's own signing secret, for the messages sent to its tasks' `webhook_url`."""

    __tablename__ = "webhook_client_secrets"

    client: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )


class WebhookMessage(Base):
    """One event of one task (or of a client: `task_id` None) for one recipient, and where
    its delivery stands. A client's message has its payload from the moment it is made."""

    __tablename__ = "webhook_messages"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    task_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    client: Mapped[str] = mapped_column(Text)
    type: Mapped[WebhookType] = mapped_column(Word(WebhookType))
    # The recipient: an endpoint (its URL and secret as they are at each attempt), or a
    # task's own URL (signed with the client's secret).
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    url: Mapped[str | None] = mapped_column(Text)
    status: Mapped[MessageStatus] = mapped_column(
        Word(MessageStatus), default=MessageStatus.PENDING, server_default=text("'pending'")
    )
    # `{"type", "timestamp", "data"}`, rendered at the first attempt and never again.
    payload: Mapped[str | None] = mapped_column(Text)
    # Attempts since the message was made or last redelivered: the place in the schedule.
    round_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint(_one_of("type", WebhookType), name="type"),
        CheckConstraint(_one_of("status", MessageStatus), name="status"),
        CheckConstraint("(endpoint_id IS NULL) <> (url IS NULL)", name="one_recipient"),
        Index("ix_webhook_messages_task_id", "task_id", "created_at"),
        Index("ix_webhook_messages_endpoint", "endpoint_id", "created_at", "id"),
        # The sweeper, the metrics' oldest undelivered message.
        Index(
            "ix_webhook_messages_pending",
            "next_attempt_at",
            postgresql_where=text(f"status = '{MessageStatus.PENDING.value}'"),
        ),
    )


class WebhookAttempt(Base):
    """One try at delivering a message: when, what came back (or what went wrong), how fast."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_messages.id", ondelete="CASCADE")
    )
    url: Mapped[str] = mapped_column(Text)
    attempted_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int] = mapped_column(Integer)
    # The first 1 KB of the answer's body.
    response_body: Mapped[str | None] = mapped_column(Text)
    # delivered, retrying, failed (the message's status after this attempt) or disabled.
    outcome: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_attempts_message_id", "message_id", "id"),)
