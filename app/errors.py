"""One error tree, rendered as RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger("edithook")

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


class BadRequest(ProblemError):
    status, slug, title = 400, "bad-request", "Bad request"


class Conflict(ProblemError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ProblemError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class Unprocessable(ProblemError):
    status, slug, title = 422, "validation-error", "The request is not valid"


class ServiceUnavailable(ProblemError):
    status, slug, title = 503, "unavailable", "Service unavailable"


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

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if not exc.connection_invalidated:
            return await _unexpected(request, exc)
        # A connection lost to a Postgres restart or outage. The engine has discarded its
        # pooled connections, so the client's retry has a fair chance.
        logger.error("database connection lost on %s %s", request.method, request.url.path)
        return problem(
            503,
            slug=ServiceUnavailable.slug,
            title=ServiceUnavailable.title,
            detail="The database connection was lost; retry.",
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.scope.get("route"))
        return problem(500, detail="An unexpected error occurred; it has been logged.")
