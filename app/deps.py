"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Unauthorized
from app.resources import Resources

_bearer = HTTPBearer(auto_error=False, description="A client key from EDITHOOK_API_KEYS.")


# The dependencies without I/O are still `async def`: FastAPI runs a plain `def` dependency
# in a thread pool, which costs more than everything else some routes do.


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    async with resources.sessions() as session, session.begin():
        yield session


# scope="function": the transaction ends before the response is sent, so a 2xx always
# follows the commit and no connection idles in a transaction while the client reads.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_caller(
    resources: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The name of the client whose key the request carries."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Send `Authorization: Bearer <key>`.", headers=challenge)
    client = resources.api_keys.client_for(credentials.credentials)
    if client is None:
        raise Unauthorized("The key is not valid.", headers=challenge)
    return client


CallerDep = Annotated[str, Depends(get_caller)]
