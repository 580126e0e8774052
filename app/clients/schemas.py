"""The REST shapes of clients and API keys, shared by the admin API and the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.tasks.schemas import IntegralNumber
from app.vocabulary import BudgetPeriod, ClientStatus

# What a new client may be called: it appears in logs, metrics and URLs as it is.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
INT_MAX = 2**31 - 1  # the columns are Postgres integers

ClientName = Annotated[StrictStr, Field(pattern=NAME_PATTERN, max_length=64)]
Count = Annotated[StrictInt, Field(ge=1, le=INT_MAX), IntegralNumber]
Images = Annotated[StrictInt, Field(ge=0, le=INT_MAX), IntegralNumber]
Ratio = Annotated[float, Field(strict=True, gt=0, le=1)]


class Limits(BaseModel):
    """What a client may spend; null (or left out) means no limit. Enforced by later work:
    stored and validated now."""

    model_config = ConfigDict(extra="forbid")

    budget_images: Images | None = Field(
        default=None, description="Images per budget period; with no period given, a month."
    )
    budget_period: BudgetPeriod | None = Field(default=None, description="A UTC day or month.")
    budget_soft_ratio: Ratio | None = Field(
        default=None, description="The share of the budget at which the client is warned."
    )
    requests_per_minute: Count | None = None
    max_in_flight: Count | None = Field(
        default=None, description="Tasks beyond it wait queued, oldest first."
    )


class ClientCreate(Limits):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "billing", "budget_images": 1000, "budget_period": "month"}]
        },
    )

    name: ClientName = Field(description="Letters, digits, `.`, `_`, `-`; what tasks record.")


class ClientUpdate(Limits):
    """The fields to change; a limit set to null is removed."""

    model_config = ConfigDict(extra="forbid")

    # Left out, not null: a client is always active or disabled.
    status: ClientStatus | SkipJsonSchema[None] = Field(
        default=None, description="`disabled`: its keys are refused (403) on every replica."
    )

    @field_validator("status")
    @classmethod
    def _not_null(cls, value: ClientStatus | None) -> ClientStatus:
        # Reached only when given: left out, the default is not validated.
        if value is None:
            raise ValueError("must not be null: a client is active or disabled")
        return value


class ClientRead(BaseModel):
    name: str
    status: ClientStatus
    budget_images: int | None
    budget_period: BudgetPeriod | None
    budget_soft_ratio: float | None
    requests_per_minute: int | None
    max_in_flight: int | None
    created_at: datetime
    updated_at: datetime


class ClientList(BaseModel):
    items: list[ClientRead]


class KeyCreated(BaseModel):
    id: uuid.UUID
    key: str = Field(description="Send as `Authorization: Bearer <key>`. Shown only now.")
    created_at: datetime


class KeyRead(BaseModel):
    """A key without its secret: only its digest is stored."""

    id: uuid.UUID
    client: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="Recorded to within about a minute.")


class KeyList(BaseModel):
    items: list[KeyRead]


# Responses are validated from the rows (ORM objects of app.models).


def client_read(row: object) -> ClientRead:
    return ClientRead.model_validate(row, from_attributes=True)


def client_list(rows: Sequence[object]) -> ClientList:
    return ClientList(items=[client_read(row) for row in rows])


def key_read(row: object) -> KeyRead:
    return KeyRead.model_validate(row, from_attributes=True)


def key_list(rows: Sequence[object]) -> KeyList:
    return KeyList(items=[key_read(row) for row in rows])
