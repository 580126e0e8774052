"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app import links
from app.clients.keys import KeyCache, KeyEntry
from app.errors import (
    PROBLEM_JSON,
    AdminDisabled,
    ClientDisabled,
    LinkExpired,
    LinkInvalid,
    NotFound,
    Unauthorized,
)
from app.resources import Resources
from app.security import AdminKeys

_bearer = HTTPBearer(
    auto_error=False,
    description="A client's key, made with `edithook keys create` (or EDITHOOK_API_KEYS).",
)
_admin_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminKey",
    description="An operator's key from EDITHOOK_ADMIN_KEYS.",
)


# The dependencies without I/O are still `async def`: FastAPI runs a plain `def` dependency
# in a thread pool, which costs more than everything else some routes do.


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error.

    The rule of the house: the edge (this request, or a job function) owns the transaction
    and services take the session and never commit. The few flows that must commit before
    they answer (they wait, or call the provider) are named in `app.tasks.routes`.
    """
    async with resources.sessions() as session, session.begin():
        yield session


# scope="function": the transaction ends before the response is sent, so a 2xx always
# follows the commit and no connection idles in a transaction while the client reads.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


PROBLEM: dict[str, Any] = {"content": {PROBLEM_JSON: {}}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such task for this client.", **PROBLEM}
}


def parse_task_id(task_id: str) -> uuid.UUID:
    """A task id from the path; a malformed one names no task, so it is a 404."""
    try:
        return uuid.UUID(task_id)
    except ValueError:
        raise NotFound("No such task.") from None


CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _bearer_key(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("Send `Authorization: Bearer <key>`.", headers=CHALLENGE)
    return key


def key_entry(keys: KeyCache, authorization: str | None) -> KeyEntry:
    """The entry of the key an `Authorization` header carries: its client and limits.

    Raises Unauthorized (401) for no key or one that is not valid (unknown or revoked), and
    ClientDisabled (403) for a valid key of a disabled client.
    """
    entry = keys.lookup(_bearer_key(authorization))
    if entry is None:
        raise Unauthorized("The key is not valid.", headers=CHALLENGE)
    if not entry.active:
        raise ClientDisabled(f"The client {entry.client!r} is disabled; ask an operator.")
    return entry


def authenticate(keys: KeyCache, authorization: str | None) -> str:
    """The client whose key an `Authorization` header carries (see `key_entry`)."""
    return key_entry(keys, authorization).client


def authenticate_admin(admin_keys: AdminKeys, authorization: str | None) -> None:
    """Raises AdminDisabled (403) when no admin key is configured, else Unauthorized (401)
    unless the header carries one of them."""
    if not admin_keys:
        raise AdminDisabled(
            "The admin API is off: set EDITHOOK_ADMIN_KEYS, or use `edithook clients` and "
            "`edithook keys` on the database."
        )
    if not admin_keys.accepts(_bearer_key(authorization)):
        raise Unauthorized("The key is not an admin key.", headers=CHALLENGE)


async def get_admin(
    request: Request,
    resources: ResourcesDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """Admits an operator's request (the edge has already checked those with a body)."""
    authenticate_admin(resources.admin_keys, request.headers.get("authorization"))
    structlog.contextvars.bind_contextvars(client="admin")


async def get_caller(
    request: Request,
    resources: ResourcesDep,
    # Declared for the OpenAPI document's security scheme; the header is read as it came.
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The name of the client whose key the request carries; it and the task go in the logs."""
    client = authenticate(resources.api_keys, request.headers.get("authorization"))
    task_id = request.path_params.get("task_id")
    structlog.contextvars.bind_contextvars(client=client)
    if task_id is not None:
        structlog.contextvars.bind_contextvars(task_id=task_id)
    return client


CallerDep = Annotated[str, Depends(get_caller)]


def require_signed_link(
    resources: Resources, path: str, expires: str | None, signature: str | None, *, expired: str
) -> None:
    """Let a request without a key through only with a valid signed link (`app.links`) to
    `path`: 403 `link-invalid` when its signature is missing or wrong, 403 `link-expired`
    (with `expired` as the detail) once it has expired."""
    key = links.link_key(resources.settings.callback_secret.get_secret_value())
    verdict = links.check(key, path, expires, signature, time.time())
    if verdict == links.LinkCheck.INVALID:
        raise LinkInvalid("The link's signature is missing or wrong.")
    if verdict == links.LinkCheck.EXPIRED:
        raise LinkExpired(expired)
