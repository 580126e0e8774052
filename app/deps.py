"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import PROBLEM_JSON, NotFound, Unauthorized
from app.resources import Resources
from app.security import ApiKeys

_bearer = HTTPBearer(auto_error=False, description="A client key from EDITHOOK_API_KEYS.")


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


def authenticate(api_keys: ApiKeys, authorization: str | None) -> str:
    """The client whose key an `Authorization` header carries; raises Unauthorized if none."""
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("Send `Authorization: Bearer <key>`.", headers=CHALLENGE)
    client = api_keys.client_for(key)
    if client is None:
        raise Unauthorized("The key is not valid.", headers=CHALLENGE)
    return client


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
