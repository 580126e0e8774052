"""What every request meets before the app reads it: a key check, a body limit, a last answer.

A pure ASGI middleware, because FastAPI reads and parses a route's body before it runs the
route's dependencies: a check made there comes after the body has arrived. Here:

- a request with a body to the client API (`/v1/`, but not the callback receiver, whose
  token is in its path and checked by its route) must carry a valid key, or is answered 401
  (403 for a disabled client's) without a byte of its body read; one to the admin API
  (`/v1/admin/`) must carry an admin key;
- the body is limited while it streams (`rest_limit`, or the limit `body_limits` names for
  its exact path, such as uploads'): a declared `Content-Length` over the route's limit
  fails the first read at once, a streamed body fails the read that passes the limit (both
  raise `BodyTooLarge`, answered 413); the receiver catches it to record the attempt;
- an error nothing else handled is answered here with a 500 problem and one log line, rather
  than by Starlette's outermost handler, which re-raises it for the server to print with its
  traceback (and with it the SQL parameters of a failed statement).

It also starts each request with empty logging context, so that no request's client or task
is carried into another's log lines.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.deps import authenticate, authenticate_admin
from app.errors import BodyTooLarge, ProblemError, problem, unexpected
from app.resources import Resources

CLIENT_API_PREFIX = "/v1/"
CALLBACK_PREFIX = "/v1/callbacks/"
ADMIN_PREFIX = "/v1/admin/"


class RequestEdge:
    """Checks the key before a body is read, bounds the body, and answers what escapes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        rest_limit: int,
        callback_limit: int,
        body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.rest_limit = rest_limit
        self.callback_limit = callback_limit
        self.body_limits = dict(body_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        path: str = scope["path"]
        headers = Headers(scope=scope)
        declared = _content_length(headers)
        callback = path.startswith(CALLBACK_PREFIX)
        has_body = bool(declared) or "transfer-encoding" in headers
        if has_body and not callback and path.startswith(CLIENT_API_PREFIX):
            resources: Resources = scope["app"].state.resources
            try:
                if path.startswith(ADMIN_PREFIX):
                    authenticate_admin(resources.admin_keys, headers.get("authorization"))
                else:
                    authenticate(resources.api_keys, headers.get("authorization"))
            except ProblemError as exc:
                response = problem(
                    exc.status, slug=exc.slug, title=exc.title, detail=exc.detail,
                    headers=exc.headers,
                )  # fmt: skip
                await response(scope, receive, send)
                return

        limit = self.callback_limit if callback else self.body_limits.get(path, self.rest_limit)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            if declared is not None and declared > limit:
                raise BodyTooLarge(limit, declared)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, seen)
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except Exception as exc:
            response = unexpected(scope, exc)
            if not started:
                await response(scope, receive, send)
            # With the answer under way there is nothing to send: the server closes the
            # connection when the app returns without finishing it.


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None
