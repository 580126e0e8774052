"""The OpenAPI document: every error the service sends, documented where it is sent.

Routes declare the answers particular to them (404, 409, 410…). What follows from a route's
shape is added here, once, so that a new route is documented truthfully without repeating
itself: 401 and 403 for routes that take a client's or an operator's key (and 429, with the
rate-limit fields, for a client's), 400 and 413 for
routes with a body, 400 for routes with a cursor, 503 for routes that need the database,
and 422 as problem details.
Every error is `application/problem+json` with the `Problem` schema (validation problems
add `errors`); FastAPI's own `HTTPValidationError` schema never appears. The one exception
is the OpenAI-compatible route, whose errors are OpenAI's (`OWN_ERROR_SHAPES`): JSON with the
`OpenAIErrorBody` schema, and never a 422.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, Field

from app.deps import get_admin, get_caller
from app.errors import PROBLEM_JSON

# Routes that answer without the database: nothing there can be a 503 for want of it.
NO_DATABASE = frozenset({"/healthz"})
# Path prefixes whose errors are not problem details: the schema they are (application/json).
OWN_ERROR_SHAPES = {"/v1/images/": "OpenAIErrorBody"}


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="A URI naming the kind of problem; `about:blank` if none.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class FieldProblem(BaseModel):
    field: str = Field(description="Where: `prompt`, `image_urls[0]`, `query.limit`…")
    message: str
    code: str


class ValidationProblem(Problem):
    """A 422: every problem with the request, one per entry of `errors`."""

    errors: list[FieldProblem]


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds after which a retry may succeed.",
        "schema": {"type": "string"},
        "required": True,
    }
}

# Sent with every answer to a client whose requests are counted (`requests_per_minute`).
RATE_LIMIT_FIELDS = {
    "RateLimit-Policy": {
        "description": 'The quota policy (IETF draft): `"default";q=<requests>;w=60`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left of it: `"default";r=<remaining>;t=<seconds to reset>`.',
        "schema": {"type": "string"},
    },
}

# What each added status means; a route's own description wins where it gives one.
ADDED: dict[str, str] = {
    "400": "The body, a cursor or another parameter cannot be read.",
    "401": "No key, or a key that is not valid (`WWW-Authenticate: Bearer`).",
    "403": "The key's client is disabled.",
    "413": "The body is over the limit.",
    "429": "More requests this minute than the client's `requests_per_minute`; retry after "
    "`Retry-After` seconds.",
    "503": "The database is unavailable; retry after `Retry-After` seconds.",
}


def install_openapi(app: FastAPI) -> None:
    """Serve the document built by `build_openapi`, built once on first request."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (Problem, FieldProblem, ValidationProblem):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schema.pop("$defs", None)
        schemas[model.__name__] = schema

    # Routes of included routers are reached through their contexts, which know the full path.
    for context in iter_route_contexts(app.routes):
        route, path = context.original_route, context.path_format
        if not isinstance(route, APIRoute) or path is None or path not in document["paths"]:
            continue
        for method in route.methods or ():
            operation = document["paths"][path].get(method.lower())
            if operation is not None:
                _document_errors(route, path, operation)
    return document


def _document_errors(route: APIRoute, path: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    added = set()
    if _depends_on(route.dependant, get_caller):
        added |= {"401", "403", "429"}
    if _depends_on(route.dependant, get_admin):
        added |= {"401", "403"}
        responses.setdefault(
            "403", {"description": "No admin key is configured (EDITHOOK_ADMIN_KEYS)."}
        )
    if route.body_field is not None or path.startswith("/v1/callbacks/"):
        added |= {"400", "413"}
    if any(param.name == "cursor" for param in route.dependant.query_params):
        added.add("400")
    if path not in NO_DATABASE:
        added.add("503")
    for status in sorted(added):
        responses.setdefault(status, {"description": ADDED[status]})
    own = next((name for prefix, name in OWN_ERROR_SHAPES.items() if path.startswith(prefix)), None)
    if own is not None:
        responses.pop("422", None)  # its validation errors are 400s
    if "422" in responses:
        responses["422"]["description"] = responses["422"].get("description") or "Invalid."
    for status, response in responses.items():
        if not status.startswith(("4", "5")):
            continue
        if path == "/readyz":
            continue  # answers its own JSON, not a problem
        if own is not None:
            response["content"] = {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{own}"}}
            }
            if status == "503":
                response.setdefault("headers", {}).update(RETRY_AFTER)
            continue
        schema = "ValidationProblem" if status == "422" else "Problem"
        response["content"] = {PROBLEM_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
        if status == "503":
            response.setdefault("headers", {}).update(RETRY_AFTER)
        if status == "429":
            response.setdefault("headers", {}).update({**RETRY_AFTER, **RATE_LIMIT_FIELDS})


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(dep.call is call for dep in _walk(dependant))


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    for dep in dependant.dependencies:
        yield dep
        yield from _walk(dep)
