"""The admin API: operators make clients, change their status and limits, and hand out and
revoke their keys. Every route needs an admin key (`get_admin`); each takes the request's
transaction (`SessionDep`) and calls the service.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response

from app.clients import service
from app.clients.schemas import (
    ClientCreate,
    ClientList,
    ClientRead,
    ClientUpdate,
    KeyCreated,
    KeyList,
    client_list,
    client_read,
    key_list,
)
from app.deps import PROBLEM, SessionDep, get_admin

router = APIRouter(tags=["admin"], dependencies=[Depends(get_admin)])

CLIENTS = "/v1/admin/clients"
Responses = dict[int | str, dict[str, Any]]
NO_CLIENT: Responses = {404: {"description": "No such client.", **PROBLEM}}
NO_KEY: Responses = {404: {"description": "No such client, or no such key of it.", **PROBLEM}}
TAKEN: Responses = {409: {"description": "A client of that name exists.", **PROBLEM}}


@router.post(CLIENTS, status_code=201, summary="Make a client", responses=TAKEN)
async def create_client(body: ClientCreate, session: SessionDep) -> ClientRead:
    return client_read(await service.create_client(session, body))


@router.get(CLIENTS, summary="List the clients")
async def list_clients(session: SessionDep) -> ClientList:
    return client_list(await service.list_clients(session))


@router.get(CLIENTS + "/{name}", summary="Get a client", responses=NO_CLIENT)
async def get_client(name: str, session: SessionDep) -> ClientRead:
    return client_read(await service.get_client(session, name))


@router.patch(
    CLIENTS + "/{name}",
    summary="Change a client's status or limits",
    description="A disabled client's keys are refused on every API replica within a second.",
    responses=NO_CLIENT,
)
async def update_client(name: str, body: ClientUpdate, session: SessionDep) -> ClientRead:
    return client_read(await service.update_client(session, name, body))


@router.post(
    CLIENTS + "/{name}/keys",
    status_code=201,
    summary="Make a key for a client",
    description="The key is shown only now; only its SHA-256 digest is stored.",
    responses=NO_CLIENT,
)
async def create_key(name: str, session: SessionDep) -> KeyCreated:
    row, key = await service.create_key(session, name)
    return KeyCreated(id=row.id, key=key, created_at=row.created_at)


@router.get(CLIENTS + "/{name}/keys", summary="List a client's keys", responses=NO_CLIENT)
async def list_keys(name: str, session: SessionDep) -> KeyList:
    return key_list(await service.list_keys(session, name))


@router.delete(
    CLIENTS + "/{name}/keys/{key_id}",
    status_code=204,
    summary="Revoke a key",
    description="Refused on every API replica within a second. Revoking twice is no error.",
    responses=NO_KEY,
)
async def revoke_key(name: str, key_id: str, session: SessionDep) -> Response:
    await service.revoke_key(session, name, service.parse_key_id(key_id))
    return Response(status_code=204)
