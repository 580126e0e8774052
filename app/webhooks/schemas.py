"""The REST shapes of webhook endpoints, secrets, messages and their attempts."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
)
from pydantic.json_schema import SkipJsonSchema

from app.tasks.schemas import NO_NUL, StorableStr
from app.vocabulary import MessageStatus, WebhookType

DESCRIPTION_MAX = 500
URL_MAX = 2048
# Checked against the operator's rule by the service (a 422 naming the reason); here only
# its shape. `public-https-url` is what schemathesis makes for it (tests/integration).
URL_SCHEMA: dict[str, Any] = {"format": "public-https-url", "maxLength": URL_MAX}

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and _RFC3339.fullmatch(value):
        return value
    raise ValueError("must be an RFC 3339 date-time with an offset, like 2026-11-24T05:14:44Z")


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]


def _unique(value: list[WebhookType]) -> list[WebhookType]:
    if len(set(value)) != len(value):
        raise ValueError("must not name an event type twice")
    return value


EventTypes = Annotated[
    list[WebhookType],
    AfterValidator(_unique),
    Field(
        min_length=1,
        description="Only these events; leave out (or null) for all of them.",
        json_schema_extra={"uniqueItems": True},
    ),
]
Url = Annotated[StrictStr, Field(max_length=URL_MAX, json_schema_extra=URL_SCHEMA)]
Description = Annotated[
    StorableStr, Field(max_length=DESCRIPTION_MAX, json_schema_extra={"pattern": NO_NUL})
]


class EndpointCreate(BaseModel):
    """Where to send a client's events, and which of them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://hooks.internal.example.com/edithook",
                    "event_types": ["task.succeeded", "task.failed"],
                    "description": "order service",
                }
            ]
        },
    )

    url: Url = Field(
        description="https (http to loopback in development); a private host only if the "
        "operator lists it in EDITHOOK_WEBHOOK_ALLOWED_HOSTS."
    )
    event_types: EventTypes | None = None
    description: Description | None = None


class EndpointUpdate(BaseModel):
    """The fields to change; `enabled: true` re-enables an endpoint and clears its reason."""

    model_config = ConfigDict(extra="forbid")

    # Left out, not null: an endpoint always has a URL and is enabled or not.
    url: Url | SkipJsonSchema[None] = None
    event_types: EventTypes | None = None
    description: Description | None = None
    enabled: StrictBool | SkipJsonSchema[None] = None


class EndpointRead(BaseModel):
    id: uuid.UUID
    url: str
    event_types: list[WebhookType] | None = Field(description="null: every event.")
    description: str | None
    enabled: bool
    disabled_reason: str | None = Field(description="Why it was disabled (410, 5 days failing).")
    created_at: datetime


class EndpointCreated(EndpointRead):
    secret: str = Field(description="`whsec_…`: verify deliveries with it. Shown only now.")


class EndpointList(BaseModel):
    items: list[EndpointRead]


class SecretRead(BaseModel):
    secret: str = Field(description="`whsec_…`, the Standard Webhooks signing secret.")


class AttemptRead(BaseModel):
    """One try at delivering a message."""

    attempted_at: datetime
    url: str
    status_code: int | None = Field(description="The HTTP status, or null if none came.")
    error: str | None = Field(description="What went wrong when no status came.")
    latency_ms: int
    response_body: str | None = Field(description="The first 1 KB of the answer.")
    outcome: str = Field(description="delivered, retrying, failed or disabled.")


class MessageRead(BaseModel):
    """One event for one recipient; `id` is the `webhook-id` of every delivery of it."""

    id: uuid.UUID
    task_id: uuid.UUID | None = Field(
        description="The task it is about; null for a message about the client itself."
    )
    type: WebhookType
    endpoint_id: uuid.UUID | None
    url: str | None = Field(description="The task's own URL, when sent there.")
    status: MessageStatus
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="Set while pending.")
    delivered_at: datetime | None
    last_error: str | None
    attempts: list[AttemptRead]


class MessageList(BaseModel):
    items: list[MessageRead]


class MessagePage(BaseModel):
    items: list[MessageRead]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class RecoverBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Timestamp = Field(description="Redeliver every failed message made since then.")


class RecoverAccepted(BaseModel):
    endpoint_id: uuid.UUID
    since: datetime
