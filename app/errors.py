"""One error tree, rendered as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from psycopg_pool import PoolTimeout
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as EnginePoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.db import LOST_CONNECTION_CLASSES, DirectUnavailable

logger = logging.getLogger("edithook")

# How long a client should wait before retrying a request that met a database outage.
RETRY_AFTER_SECONDS = 1
# SQLSTATE classes that mean "no database to talk to" rather than "this statement failed":
# the lost-connection ones, and insufficient resources (too many connections).
OUTAGE_CLASSES = (*LOST_CONNECTION_CLASSES, "53")
_PACKAGE = Path(__file__).resolve().parent

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "tag:edithook,2026:problem/"


class ProblemError(Exception):
    """A failure the caller should see; subclasses fix the status and the problem type."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class NotFound(ProblemError):
    status, slug, title = 404, "not-found", "Not found"


class Unauthorized(ProblemError):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class ClientDisabled(ProblemError):
    status, slug, title = 403, "client-disabled", "Client disabled"


class AdminDisabled(ProblemError):
    status, slug, title = 403, "admin-disabled", "Admin API disabled"


class BadRequest(ProblemError):
    status, slug, title = 400, "bad-request", "Bad request"


class Conflict(ProblemError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ProblemError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class Unprocessable(ProblemError):
    status, slug, title = 422, "validation-error", "The request is not valid"


class UnsupportedMediaType(ProblemError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidImage(ProblemError):
    """Bytes of an accepted type that cannot be used: undecodable, or sized outside EvoLink's
    limits."""

    status, slug, title = 422, "invalid-image", "The image cannot be used"


class LinkInvalid(ProblemError):
    """A signed link with a missing, malformed or wrong signature (`app.links`)."""

    status, slug, title = 403, "link-invalid", "The link is not valid"


class LinkExpired(ProblemError):
    """A signed link of ours, past its expiry."""

    status, slug, title = 403, "link-expired", "The link has expired"


class Gone(ProblemError):
    status, slug, title = 410, "gone", "Gone"


class ServiceUnavailable(ProblemError):
    status, slug, title = 503, "unavailable", "Service unavailable"


class BodyTooLarge(StarletteHTTPException):
    """A request body is over its route's limit: raised by the body's reader, never read on.

    An HTTPException so that FastAPI's body parsing passes it on as it is (it turns other
    errors of reading into 400s); rendered as a `payload-too-large` problem.
    """

    def __init__(self, limit: int, size: int) -> None:
        super().__init__(413, f"The body is over {limit} bytes.")
        self.limit = limit
        self.size = size


def problem(
    status: int,
    *,
    slug: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem-details response; `type` is `about:blank` unless a slug names one."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _location(loc: tuple[Any, ...]) -> str:
    # ("body", "image_urls", 0) → "image_urls[0]"; the request part stays implicit for bodies.
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_errors(errors: list[Any]) -> list[dict[str, str]]:
    """Pydantic errors as `{"field", "message", "code"}`, one per problem."""
    out = []
    for err in errors:
        message = str(err.get("msg", "invalid"))
        message = message.removeprefix("Value error, ")
        out.append(
            {
                "field": _location(tuple(err.get("loc", ()))),
                "message": message,
                "code": str(err.get("type", "invalid")),
            }
        )
    return out


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at the request's path, sorted."""
    methods: set[str] = set()
    # Included routers' routes are reached through their contexts, which know the full path.
    for route in iter_route_contexts(app.router.routes):
        # PARTIAL: the path matches and the method does not; FULL cannot happen on a 405.
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def database_outage(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from, says the database cannot be reached."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DirectUnavailable | EnginePoolTimeout | PoolTimeout):
            return True
        if isinstance(seen, DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, psycopg.OperationalError | psycopg.InterfaceError):
            return seen.sqlstate is None or seen.sqlstate.startswith(OUTAGE_CLASSES)
        seen = seen.__cause__ or seen.__context__
    return False


def _kinds(exc: BaseException) -> str:
    """`exc`'s type and the types it was raised from: "OperationalError < OperationalError"."""
    names: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(names) < 4:
        names.append(type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return " < ".join(names)


def _where(exc: BaseException) -> str:
    """The innermost line of edithook's own code that the error passed through."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if Path(frame.filename).resolve().is_relative_to(_PACKAGE)
    ]
    if not frames:
        return "outside edithook's code"
    frame = frames[-1]
    path = Path(frame.filename).resolve().relative_to(_PACKAGE.parent)
    return f"{path}:{frame.lineno} in {frame.name}"


def _route(scope: Mapping[str, Any]) -> str:
    route = scope.get("route")
    return f"{scope.get('method')} {getattr(route, 'path', None) or scope.get('path')}"


def unexpected(scope: Mapping[str, Any], exc: BaseException) -> JSONResponse:
    """The 500 for an error nothing else handled, and its one log line.

    The line names the error's types, the route and the code it came from; never its message
    or traceback text, which carry SQL parameters and so the client's prompts and metadata.
    """
    logger.error("unhandled %s on %s at %s", _kinds(exc), _route(scope), _where(exc))
    return problem(500, detail="An unexpected error occurred; it has been logged.")


def outage(scope: Mapping[str, Any], exc: BaseException) -> JSONResponse:
    """The 503 for a request that met a database outage, and its one log line."""
    logger.error("database unavailable on %s (%s)", _route(scope), _kinds(exc))
    lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
    return problem(
        503,
        slug=ServiceUnavailable.slug,
        title=ServiceUnavailable.title,
        # A lost connection has been discarded with its pool: a retry has a fair chance.
        detail="The database connection was lost; retry."
        if lost
        else "The database is unavailable; retry.",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Make every error, expected or not, leave as problem details."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem(
            exc.status,
            slug=exc.slug,
            title=exc.title,
            detail=exc.detail,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()))
        return problem(
            422,
            slug=Unprocessable.slug,
            title=Unprocessable.title,
            detail=f"{len(errors)} problem(s) found; see `errors`.",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code != 404 else None
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # The router names only the methods of the first route that matched the path;
            # a path served by several routes (GET and POST /v1/tasks) allows them all.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request))}
        return problem(exc.status_code, detail=detail, headers=headers)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return problem(
            413,
            slug=PayloadTooLarge.slug,
            title=PayloadTooLarge.title,
            detail=str(exc.detail),
        )

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        if database_outage(exc):
            return outage(request.scope, exc)
        return unexpected(request.scope, exc)

    for kind in (DBAPIError, EnginePoolTimeout, psycopg.Error, DirectUnavailable):
        app.add_exception_handler(kind, _database)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Reached only by errors outside the edge middleware, which answers the rest itself.
        return unexpected(request.scope, exc)
