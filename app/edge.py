"""What every request meets before the app reads it: a key check, a body limit, a last answer.

A pure ASGI middleware, because FastAPI reads and parses a route's body before it runs the
route's dependencies: a check made there comes after the body has arrived. Here:

- a request with a body to the client API (`/v1/`, but not the callback receiver, whose
  token is in its path and checked by its route) must carry a valid key, or is answered 401
  (403 for a disabled client's) without a byte of its body read; one to the admin API
  (`/v1/admin/`) must carry an admin key;
- the body is limited while it streams (`rest_limit`, or the limit `body_limits` names for
  its exact path, such as uploads' one image and `POST /v1/images/edits`' three): a declared
  `Content-Length` over the route's limit fails the first read at once, a streamed body fails
  the read that passes the limit (both raise `BodyTooLarge`, answered 413); the receiver
  catches it to record the attempt;
- a request of the client API (`/v1/`, but not the admin API or the callback receiver)
  carrying a valid key of a client with `requests_per_minute` is counted
  (`app.clients.ratelimit`): over the limit it is answered 429 without reaching the app;
  every counted answer carries the `RateLimit-Policy` and `RateLimit` fields. A request of
  an unlimited client, or one without a valid key (its route answers 401/403), costs no
  statement;
- an error nothing else handled is answered here with a 500 problem and one log line, rather
  than by Starlette's outermost handler, which re-raises it for the server to print with its
  traceback (and with it the SQL parameters of a failed statement).

It also starts each request with empty logging context, so that no request's client or task
is carried into another's log lines. Under a prefix of `renderers` (the OpenAI-compatible
route), its refusals and its 500 are rendered by that prefix's function instead of as
problem details.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.clients.keys import KeyEntry
from app.clients.ratelimit import Quota
from app.deps import authenticate_admin, key_entry
from app.errors import BodyTooLarge, ProblemError, RateLimited, problem, unexpected
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
        renderers: Mapping[str, Callable[[ProblemError], Response]] | None = None,
    ) -> None:
        self.app = app
        self.rest_limit = rest_limit
        self.callback_limit = callback_limit
        self.body_limits = dict(body_limits or {})
        self.renderers = dict(renderers or {})

    def _renderer(self, path: str) -> Callable[[ProblemError], Response] | None:
        for prefix, render in self.renderers.items():
            if path.startswith(prefix):
                return render
        return None

    async def _answer(
        self, exc: ProblemError, path: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Refuse the request with `exc`: as problem details, or as the path's renderer has it."""
        render = self._renderer(path)
        response = (
            render(exc)
            if render is not None
            else problem(
                exc.status, slug=exc.slug, title=exc.title, detail=exc.detail, headers=exc.headers
            )
        )
        await response(scope, receive, send)

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
        quota: Quota | None = None
        if not callback and path.startswith(CLIENT_API_PREFIX):
            resources: Resources = scope["app"].state.resources
            admin = path.startswith(ADMIN_PREFIX)
            entry: KeyEntry | None = None
            try:
                if admin and has_body:
                    authenticate_admin(resources.admin_keys, headers.get("authorization"))
                elif not admin:
                    entry = key_entry(resources.api_keys, headers.get("authorization"))
            except ProblemError as exc:
                # Without a body the route's own dependency answers, as it always did.
                if has_body:
                    await self._answer(exc, path, scope, receive, send)
                    return
            if entry is not None and entry.requests_per_minute is not None:
                quota = await resources.rate_limits.count(entry.client, entry.requests_per_minute)
                if quota is not None and not quota.allowed:
                    refusal = RateLimited(
                        f"More than {quota.limit} requests a minute; retry in {quota.reset} s.",
                        headers=quota.headers(),
                    )
                    await self._answer(refusal, path, scope, receive, send)
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
        counted = [] if quota is None else _raw(quota.headers())

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if counted:
                    message = {**message, "headers": [*message.get("headers", ()), *counted]}
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except Exception as exc:
            response: Response = unexpected(scope, exc)
            render = self._renderer(path)
            if render is not None:
                response = render(ProblemError("An unexpected error occurred; it has been logged."))
            if not started:
                await response(scope, receive, send)
            # With the answer under way there is nothing to send: the server closes the
            # connection when the app returns without finishing it.


def _raw(fields: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in fields.items()]


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None
