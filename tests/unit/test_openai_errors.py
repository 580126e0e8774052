"""OpenAI's error shape: edithook's problems, validation and unexpected errors, as OpenAI says
them. The route class is exercised on an app in memory; nothing is served."""

from __future__ import annotations

import httpx
import psycopg
import pytest
from fastapi import APIRouter, FastAPI

from app.errors import (
    BadRequest,
    ClientDisabled,
    PayloadTooLarge,
    ProblemError,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
)
from app.openai.errors import OpenAIRoute, from_problem, from_validation


class Budget(ProblemError):
    status, slug, title = 402, "budget-exhausted", "Budget exhausted"


class Limited(ProblemError):
    status, slug, title = 429, "too-many", "Too many"


@pytest.mark.parametrize(
    ("problem", "status", "kind", "code"),
    [
        (Unauthorized("The key is not valid."), 401, "invalid_request_error", "invalid_api_key"),
        (Budget("Over budget."), 402, "insufficient_quota", "insufficient_quota"),
        (ClientDisabled("Disabled."), 403, "invalid_request_error", "client_disabled"),
        (BadRequest("Bad."), 400, "invalid_request_error", "bad_request"),
        (Unprocessable("Unknown upload."), 400, "invalid_request_error", "validation_error"),
        (PayloadTooLarge("Big."), 413, "invalid_request_error", "payload_too_large"),
        (Limited("Slow down."), 429, "rate_limit_error", "rate_limit_exceeded"),
        (ServiceUnavailable("Later."), 503, "server_error", "unavailable"),
    ],
)
def test_problems_take_openais_statuses_types_and_codes(
    problem: ProblemError, status: int, kind: str, code: str
) -> None:
    """Each problem keeps its message; OpenAI never answers 422, and a budget is a 402 the
    SDK does not retry rather than OpenAI's retried 429."""
    error = from_problem(problem)
    assert (error.status, error.type, error.code) == (status, kind, code)
    assert error.body()["error"]["message"] == problem.detail


def test_a_problems_retry_after_is_kept_and_the_bearer_challenge_dropped() -> None:
    """`Retry-After` reaches the SDK, which honours it; OpenAI sends no challenge on a 401."""
    assert from_problem(Limited("x", headers={"Retry-After": "3"})).headers == {"Retry-After": "3"}
    assert from_problem(Unauthorized("x", headers={"WWW-Authenticate": "Bearer"})).headers == {}


def test_validation_names_the_first_parameter_as_the_caller_sent_it() -> None:
    """A missing field, a bad value, and task fields named by the form field they came from."""
    missing = from_validation(
        [{"type": "missing", "loc": ("body", "prompt"), "msg": "Field required"}]
    )
    assert (missing.param, missing.code) == ("prompt", "missing_required_parameter")
    assert missing.message == "Missing required parameter: 'prompt'."
    invalid = from_validation(
        [
            {"type": "value_error", "loc": ("metadata",), "msg": "Value error, too long"},
            {"type": "value_error", "loc": ("n",), "msg": "ignored"},
        ]
    )
    assert (invalid.param, invalid.code) == ("user", "invalid_value")
    assert invalid.message == "Invalid value for 'user': too long."
    assert from_validation([{"type": "x", "loc": ("image_ids", 0), "msg": "m"}]).param == "image"


async def test_the_route_class_answers_unexpected_errors_and_outages_in_openais_shape() -> None:
    """An error nothing expected is a 500 `server_error`, a lost database a 503 with
    `Retry-After`, a problem its OpenAI form: JSON, never problem details."""
    router = APIRouter(route_class=OpenAIRoute)

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    @router.get("/outage")
    async def lost() -> None:
        raise psycopg.OperationalError("connection refused")

    @router.get("/problem")
    async def refused() -> None:
        raise Unprocessable("Nope.")

    app = FastAPI()
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        boom_answer = await http.get("/boom")
        outage_answer = await http.get("/outage")
        problem_answer = await http.get("/problem")
    assert boom_answer.status_code == 500
    assert boom_answer.json()["error"]["type"] == "server_error"
    assert "secret" not in boom_answer.text
    assert outage_answer.status_code == 503
    assert outage_answer.headers["retry-after"] == "1"
    assert outage_answer.json()["error"]["code"] == "unavailable"
    assert problem_answer.status_code == 400
    for answer in (boom_answer, outage_answer, problem_answer):
        assert answer.headers["content-type"] == "application/json"
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
