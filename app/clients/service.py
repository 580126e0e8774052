"""Making, reading and changing clients and their keys. Callers own the transaction: the
admin routes take the request's, the CLI opens its own. Every change notifies the API
replicas' key caches (app.clients.keys) at commit.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.clients.keys import notify_keys_changed
from app.clients.schemas import ClientCreate, ClientUpdate, Limits
from app.errors import Conflict, NotFound
from app.models import ApiKey, Client
from app.security import key_digest
from app.vocabulary import BudgetPeriod, ClientStatus

# A key made here: a recognisable prefix (for secret scanners and people) and 256 random bits.
KEY_PREFIX = "ehk_"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _limits(client: Client, values: Mapping[str, Any]) -> None:
    for field, value in values.items():
        setattr(client, field, value)
    # A budget with no period is a monthly one: the period is never left to guess.
    if client.budget_images is not None and client.budget_period is None:
        client.budget_period = BudgetPeriod.MONTH


async def create_client(session: AsyncSession, body: ClientCreate) -> Client:
    """The new client; Conflict if the name is taken, even by a create racing this one."""
    values = body.model_dump(include=set(Limits.model_fields))
    if values["budget_images"] is not None and values["budget_period"] is None:
        values["budget_period"] = BudgetPeriod.MONTH
    made: Client | None = await session.scalar(
        insert(Client)
        .values(name=body.name, status=ClientStatus.ACTIVE, **values)
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(Client)
    )
    if made is None:
        raise Conflict(f"A client named {body.name!r} exists.")
    return made


async def list_clients(session: AsyncSession) -> Sequence[Client]:
    return (await session.scalars(select(Client).order_by(Client.name))).all()


async def get_client(session: AsyncSession, name: str, *, lock: bool = False) -> Client:
    # A NUL cannot be in a Postgres text value, so no client has one in its name.
    if "\x00" in name:
        raise NotFound(f"No client named {name!r}.")
    query = select(Client).where(Client.name == name)
    client = await session.scalar(query.with_for_update() if lock else query)
    if client is None:
        raise NotFound(f"No client named {name!r}.")
    return client


async def update_client(session: AsyncSession, name: str, body: ClientUpdate) -> Client:
    client = await get_client(session, name, lock=True)
    values = body.model_dump(include=body.model_fields_set & set(Limits.model_fields))
    _limits(client, values)
    if body.status is not None:
        client.status = body.status
    client.updated_at = datetime.now(UTC)
    await session.flush()
    await notify_keys_changed(session)
    return client


async def create_key(session: AsyncSession, name: str) -> tuple[ApiKey, str]:
    """A new key for client `name`: the row, and the key itself (never stored)."""
    await get_client(session, name)
    key = new_key()
    row = ApiKey(id=uuid.uuid4(), client=name, hash=key_digest(key))
    session.add(row)
    await session.flush()
    await session.refresh(row)
    await notify_keys_changed(session)
    return row, key


async def list_keys(session: AsyncSession, name: str) -> Sequence[ApiKey]:
    await get_client(session, name)
    query = select(ApiKey).where(ApiKey.client == name).order_by(ApiKey.created_at, ApiKey.id)
    return (await session.scalars(query)).all()


def parse_key_id(key_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(key_id)
    except ValueError:
        raise NotFound("No such key.") from None


async def revoke_key(session: AsyncSession, name: str, key_id: uuid.UUID) -> ApiKey:
    """Revoke the key; revoking a revoked key again changes nothing."""
    row = await session.scalar(
        select(ApiKey).where(ApiKey.id == key_id, ApiKey.client == name).with_for_update()
    )
    if row is None:
        raise NotFound(f"Client {name!r} has no key {key_id}.")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        await session.flush()
        await notify_keys_changed(session)
    return row
