"""Errors in OpenAI's shape, for `POST /v1/images/edits` only.

Callers of that route use OpenAI's SDK, which reads `{"error": {"message", "type", "param",
"code"}}` and picks its exception by the status (`BadRequestError` for 400,
`AuthenticationError` for 401, …). Every other route keeps edithook's problem details.

`OpenAIRoute` is the route class of that router: whatever its handler raises — edithook's
problems (a bad key, a budget), FastAPI's validation, a body over the limit, a database
outage, an error nothing expected (logged as everywhere, in one line) — leaves as an OpenAI
error with the status OpenAI would use. The edge answers a bad
key before the body is read; it renders that refusal with `render_problem` for this route.

`x-should-retry: false` is set where a retry by the SDK (which by default retries 408, 409,
429 and 5xx) would only create and pay for another task: a wait that ran out, a task that
failed for its content, was cancelled, or whose results were lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import (
    RETRY_AFTER_SECONDS,
    ProblemError,
    database_outage,
    outage,
    unexpected,
)

logger = logging.getLogger("edithook.openai")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"
NO_RETRY = {"x-should-retry": "false"}

# Fields of edithook's task whose errors the caller knows by the OpenAI parameter it sent.
PARAMS = {"image_ids": "image", "image_urls": "image", "metadata": "user"}


class OpenAIError(Exception):
    """An answer in OpenAI's error shape; `type` and `code` as OpenAI words them."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def render(error: OpenAIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


def from_problem(exc: ProblemError) -> OpenAIError:
    """An edithook problem as OpenAI would say it: the statuses OpenAI uses, the problem's
    type as the code where OpenAI has no word of its own."""
    message = exc.detail or exc.title
    headers = dict(exc.headers or {})
    param = exc.extra.get("param")
    param = param if isinstance(param, str) else None
    if exc.status == 401:
        headers.pop("WWW-Authenticate", None)
        return OpenAIError(401, message, code="invalid_api_key", headers=headers)
    if exc.status == 402:
        # OpenAI says an empty balance with 429, which its SDK retries; 402 is the truth
        # and is not retried.
        return OpenAIError(
            402, message, type="insufficient_quota", code="insufficient_quota", headers=headers
        )
    if exc.status == 429:
        return OpenAIError(
            429, message, type="rate_limit_error", code="rate_limit_exceeded", headers=headers
        )
    if exc.status in (403, 413):
        return OpenAIError(exc.status, message, param=param, code=_code(exc.slug), headers=headers)
    if exc.status >= 500:
        return OpenAIError(
            exc.status, message, type=SERVER_ERROR, code=_code(exc.slug), headers=headers
        )
    # 404, 409, 415, 422 and the rest: OpenAI answers every refused request 400.
    return OpenAIError(400, message, param=param, code=_code(exc.slug), headers=headers)


def _code(slug: str) -> str:
    return slug.replace("-", "_")


def param_of(location: tuple[Any, ...]) -> str | None:
    """The parameter a validation error's location names: `("body", "n")` → `n`."""
    parts = [part for part in location if part not in ("body", "query", "header")]
    if not parts:
        return None
    name = str(parts[0])
    return PARAMS.get(name, name)


def from_validation(errors: list[Any]) -> OpenAIError:
    """The first of pydantic's or FastAPI's validation errors, as OpenAI reports one."""
    if not errors:
        return OpenAIError(400, "The request is not valid.", code="invalid_value")
    first = errors[0]
    param = param_of(tuple(first.get("loc", ())))
    kind = str(first.get("type", ""))
    shown = f"'{param}'" if param else "the request"
    if kind == "missing":
        return OpenAIError(
            400,
            f"Missing required parameter: {shown}.",
            param=param,
            code="missing_required_parameter",
        )
    reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return OpenAIError(
        400, f"Invalid value for {shown}: {reason}.", param=param, code="invalid_value"
    )


def render_problem(exc: ProblemError) -> Response:
    """The edge's refusal of a request to this route (a bad key, before its body is read)."""
    return render(from_problem(exc))


def from_http(exc: StarletteHTTPException) -> OpenAIError:
    """FastAPI's and Starlette's own refusals: an unreadable body (400), one over the limit
    (413, `BodyTooLarge`), a wrong method (405)."""
    message = exc.detail if isinstance(exc.detail, str) else "The request was refused."
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 413:
        return OpenAIError(413, message, code="payload_too_large", headers=headers)
    if exc.status_code >= 500:
        return OpenAIError(exc.status_code, message, type=SERVER_ERROR, headers=headers)
    return OpenAIError(exc.status_code, message, headers=headers)


class OpenAIRoute(APIRoute):
    """A route whose every error leaves in OpenAI's shape (see the module's doc)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return render(exc)
            except ProblemError as exc:
                return render(from_problem(exc))
            except RequestValidationError as exc:
                return render(from_validation(list(exc.errors())))
            except StarletteHTTPException as exc:
                return render(from_http(exc))
            except Exception as exc:
                if not database_outage(exc):
                    unexpected(request.scope, exc)  # its one log line; the answer is ours
                    return render(
                        OpenAIError(
                            500,
                            "An unexpected error occurred; it has been logged.",
                            type=SERVER_ERROR,
                            code="internal_error",
                        )
                    )
                outage(request.scope, exc)  # its log line; the answer is ours
                return render(
                    OpenAIError(
                        503,
                        "The database is unavailable; retry.",
                        type=SERVER_ERROR,
                        code="unavailable",
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                    )
                )

        return handle
