"""The EvoLink client over real HTTP: the wire request, parsing, and how failures are classified."""

from __future__ import annotations

import importlib.abc
import json
import logging
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from app.evolink.client import (
    EvoLinkClient,
    EvoLinkError,
    build_http_client,
    parse_retry_after,
    parse_suggestion,
)
from app.evolink.schemas import CreateRequest, ProviderTask

if TYPE_CHECKING:
    from tests.integration.evolink.conftest import CallbackSink, CraftedProvider, Sim, SimFactory

API_KEY = "sk-evo-test-0123456789"
EDIT = CreateRequest(prompt="make it snow", image_urls=["https://cdn.example.com/in.png"])
TASK_JSON = {"id": "task-unified-1757156493-imcg5zqt", "status": "pending", "progress": 0}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with build_http_client(connect_timeout=2.0, read_timeout=5.0) as client:
        yield client


def client_for(http: httpx.AsyncClient, url: str) -> EvoLinkClient:
    return EvoLinkClient(http, url, API_KEY)


async def create_error(client: EvoLinkClient, request: CreateRequest = EDIT) -> EvoLinkError:
    with pytest.raises(EvoLinkError) as caught:
        await client.create_task(request)
    return caught.value


async def get_error(client: EvoLinkClient, task_id: str) -> EvoLinkError:
    with pytest.raises(EvoLinkError) as caught:
        await client.get_task(task_id)
    return caught.value


async def test_create_then_poll_to_completion(sim: Sim, http: httpx.AsyncClient) -> None:
    """create_task returns the pending task; get_task follows it to completed with n results."""
    client = client_for(http, sim.url)
    created = await client.create_task(EDIT.model_copy(update={"n": 2, "seed": 42}))
    assert created.status == "pending"
    assert created.id.startswith("task-unified-")
    assert created.task_info is not None
    assert created.task_info.can_cancel is True
    assert created.usage == {
        "billing_rule": "per_call",
        "credits_reserved": 2,
        "user_group": "default",
    }
    done = await sim.wait_for(created.id, "completed")
    task = await client.get_task(created.id)
    assert (task.status, task.progress, task.created) == ("completed", 100, done["created"])
    assert task.results is not None
    assert task.results == done["results"]
    assert len(task.results) == 2
    assert task.is_terminal


class ImportLookups(importlib.abc.MetaPathFinder):
    """Records every module name the import system searches for; finds nothing itself."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.names.append(name)


async def test_a_request_searches_for_no_module(sim: Sim, http: httpx.AsyncClient) -> None:
    """httpcore imports sniffio on every request; were it missing, each request would search
    sys.path for it (a stat call per path entry, four times), about a fifth of the client's
    time. With it installed, a request after the first imports nothing."""
    client = client_for(http, sim.url)
    created = await client.create_task(EDIT)
    lookups = ImportLookups()
    sys.meta_path.insert(0, lookups)
    try:
        await client.create_task(EDIT)
        await client.get_task(created.id)
    finally:
        sys.meta_path.remove(lookups)
    assert lookups.names == []


async def test_a_failed_task_parses_its_error(sim: Sim, http: httpx.AsyncClient) -> None:
    """A failed task's error.code and message come through get_task."""
    client = client_for(http, sim.url)
    created = await client.create_task(
        EDIT.model_copy(update={"prompt": "[sim:fail=service_error]"})
    )
    await sim.wait_for(created.id, "failed")
    task = await client.get_task(created.id)
    assert task.error is not None
    assert (task.error.code_str, task.error.type) == ("service_error", "task_error")
    assert task.error.message


async def test_the_wire_request(crafted: CraftedProvider, http: httpx.AsyncClient) -> None:
    """POST carries Bearer key, JSON content type and only the set fields; GET quotes the id."""
    crafted.body = json.dumps(TASK_JSON).encode()
    client = client_for(http, crafted.url + "/")
    request = EDIT.model_copy(update={"n": 2, "watermark": False, "callback_url": "https://h/cb"})
    assert (await client.create_task(request)).id == TASK_JSON["id"]
    await client.get_task("task-unified-1-a/b c?d")
    post, get = crafted.seen
    assert (post.method, post.raw_path) == ("POST", "/v1/images/generations")
    assert post.headers["authorization"] == f"Bearer {API_KEY}"
    assert post.headers["content-type"] == "application/json"
    assert json.loads(post.body) == {
        "model": "qwen-image-edit-plus",
        "prompt": "make it snow",
        "image_urls": ["https://cdn.example.com/in.png"],
        "n": 2,
        "watermark": False,
        "callback_url": "https://h/cb",
    }
    assert (get.method, get.raw_path) == ("GET", "/v1/tasks/task-unified-1-a%2Fb%20c%3Fd")
    assert get.headers["authorization"] == f"Bearer {API_KEY}"


CREATE_STATUSES = [
    (307, "permanent"),
    (400, "permanent"),
    (401, "permanent"),
    (402, "permanent"),
    (403, "permanent"),
    (404, "permanent"),
    (409, "permanent"),
    (413, "permanent"),
    (422, "permanent"),
    (408, "retryable"),
    (429, "retryable"),
    (500, "retryable"),
    (502, "retryable"),
    (503, "retryable"),
    (504, "ambiguous"),
]


@pytest.mark.parametrize(
    ("status", "outcome"), CREATE_STATUSES, ids=[str(s) for s, _ in CREATE_STATUSES]
)
async def test_create_classifies_http_statuses(
    sim: Sim, http: httpx.AsyncClient, status: int, outcome: str
) -> None:
    """Create: 429 and 5xx are retryable, a gateway timeout ambiguous, other 3xx/4xx permanent."""
    await sim.fault(endpoint="create", status=status)
    error = await create_error(client_for(http, sim.url))
    assert (error.status_code, error.outcome) == (status, outcome)
    assert error.message


GET_STATUSES = [
    (401, "permanent"),
    (403, "permanent"),
    (408, "retryable"),
    (429, "retryable"),
    (500, "retryable"),
    (503, "retryable"),
    (504, "retryable"),
]


@pytest.mark.parametrize(("status", "outcome"), GET_STATUSES, ids=[str(s) for s, _ in GET_STATUSES])
async def test_get_classifies_http_statuses(
    sim: Sim, http: httpx.AsyncClient, status: int, outcome: str
) -> None:
    """Get: 4xx is permanent except 408/429; 5xx (gateway timeouts too) is retryable."""
    await sim.fault(endpoint="get", status=status)
    error = await get_error(client_for(http, sim.url), "task-unified-1-abcdefgh")
    assert (error.status_code, error.outcome) == (status, outcome)


async def test_real_refusals_are_permanent_with_their_codes(
    sim: Sim, http: httpx.AsyncClient
) -> None:
    """A 400 invalid_request on create, 400 invalid_task_id and 404 task_not_found on get."""
    client = client_for(http, sim.url)
    invalid = await create_error(client, EDIT.model_copy(update={"n": 2, "size": "1024x1024"}))
    assert (invalid.status_code, invalid.outcome, invalid.code) == (
        400,
        "permanent",
        "invalid_request",
    )
    assert invalid.error_type == "invalid_request_error"
    malformed = await get_error(client, "abc")
    assert (malformed.status_code, malformed.code) == (400, "invalid_task_id")
    unknown = await get_error(client, "task-unified-1757156493-zzzzzzzz")
    assert (unknown.status_code, unknown.outcome, unknown.code) == (
        404,
        "permanent",
        "task_not_found",
    )
    wrong_key = await create_error(EvoLinkClient(http, sim.url, "sk-wrong"))
    assert (wrong_key.status_code, wrong_key.outcome, wrong_key.code) == (
        401,
        "permanent",
        "unauthorized",
    )


async def test_an_unreachable_provider_is_retryable(
    closed_url: str, http: httpx.AsyncClient
) -> None:
    """Connection refused: nothing was sent, so create and get are both retryable."""
    client = client_for(http, closed_url)
    created = await create_error(client)
    fetched = await get_error(client, "task-unified-1-abcdefgh")
    assert (created.outcome, created.status_code) == ("retryable", None)
    assert (fetched.outcome, fetched.status_code) == ("retryable", None)
    assert "ConnectError" in created.message


async def test_a_lost_create_answer_is_ambiguous_and_the_task_exists(
    sim: Sim, sink: CallbackSink
) -> None:
    """ReadTimeout after sending: ambiguous; the provider did create the task, which completes."""
    creates = (await sim.stats())["creates"]
    await sim.fault(endpoint="create", mode="accept_then_hang", hang_seconds=5)
    async with build_http_client(read_timeout=0.3) as impatient:
        error = await create_error(
            client_for(impatient, sim.url), EDIT.model_copy(update={"callback_url": sink.hook()})
        )
    assert (error.outcome, error.status_code) == ("ambiguous", None)
    assert "ReadTimeout" in error.message
    assert (await sim.stats())["creates"] == creates + 1
    [callback] = await sink.wait_for(1)
    assert callback.body["status"] == "completed"


async def test_a_slow_get_is_retryable(sim: Sim) -> None:
    """A GET that times out is retryable: reading a task changes nothing."""
    created = await sim.create()
    await sim.fault(endpoint="get", mode="accept_then_hang", hang_seconds=5)
    async with build_http_client(read_timeout=0.3) as impatient:
        error = await get_error(client_for(impatient, sim.url), created["id"])
    assert (error.outcome, error.status_code) == ("retryable", None)


async def test_a_dropped_connection_is_ambiguous_for_create_only(
    hangup_url: str, http: httpx.AsyncClient
) -> None:
    """The server reads the request and hangs up: create is ambiguous, get retryable."""
    client = client_for(http, hangup_url)
    created = await create_error(client)
    fetched = await get_error(client, "task-unified-1-abcdefgh")
    assert created.outcome == "ambiguous"
    assert "RemoteProtocolError" in created.message
    assert fetched.outcome == "retryable"


@pytest.mark.parametrize("body", ["not json at all", '{"ok": true}', '{"id": 5}', ""])
async def test_a_2xx_without_a_task_object(
    crafted: CraftedProvider, http: httpx.AsyncClient, body: str
) -> None:
    """An unreadable 2xx: create may have created something (ambiguous); get is retryable."""
    crafted.body = body.encode()
    client = client_for(http, crafted.url)
    created = await create_error(client)
    fetched = await get_error(client, "task-unified-1-abcdefgh")
    assert (created.outcome, created.status_code) == ("ambiguous", 200)
    assert (fetched.outcome, fetched.status_code) == ("retryable", 200)


ENVELOPES: list[tuple[int, str, dict[str, Any]]] = [
    (
        429,
        '{"error": {"code": 429, "message": "Too many", "type": "rate_limit_error",'
        ' "param": null, "fallback_suggestion": "retry after 60 seconds"}}',
        {
            "code": "429",
            "message": "Too many",
            "error_type": "rate_limit_error",
            "retry_after": 60.0,
        },
    ),
    (
        402,
        '{"error": {"code": "insufficient_quota", "message": "Top up",'
        ' "type": "insufficient_quota"}}',
        {"code": "insufficient_quota", "message": "Top up", "outcome": "permanent"},
    ),
    (
        503,
        '{"error": {"code": 503, "message": "Down",'
        ' "fallback_suggestion": "Retry after 2 minutes"}}',
        {"code": "503", "retry_after": 120.0, "outcome": "retryable"},
    ),
    (502, '{"error": "bad gateway upstream"}', {"code": None, "message": "bad gateway upstream"}),
    (500, '{"message": "internal oops"}', {"code": None, "message": "internal oops"}),
    (500, '{"error": {"code": ["odd"], "message": 5}}', {"code": None, "outcome": "retryable"}),
    (503, "", {"message": "HTTP 503 Service Unavailable"}),
    (502, "<html>" + "x" * 2000 + "</html>", {"code": None, "error_type": None}),
]


@pytest.mark.parametrize(("status", "body", "expected"), ENVELOPES)
async def test_error_envelopes_are_read_leniently(
    crafted: CraftedProvider,
    http: httpx.AsyncClient,
    status: int,
    body: str,
    expected: dict[str, Any],
) -> None:
    """Integer or string codes, optional fields, odd shapes and non-JSON all become EvoLinkError."""
    crafted.status, crafted.body = status, body.encode()
    error = await create_error(client_for(http, crafted.url))
    assert error.status_code == status
    assert 0 < len(error.message) <= 500
    for name, value in expected.items():
        assert getattr(error, name) == value, name


async def test_retry_after_in_seconds_date_or_suggestion(sim: Sim, http: httpx.AsyncClient) -> None:
    """Retry-After as delta-seconds or HTTP-date, else the fallback_suggestion, else None."""
    client = client_for(http, sim.url)
    await sim.fault(endpoint="create", status=429, retry_after=7)
    assert (await create_error(client)).retry_after == 7.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    await sim.fault(endpoint="create", status=503, retry_after=later)
    from_date = (await create_error(client)).retry_after
    assert from_date is not None
    assert 25 <= from_date <= 31
    await sim.fault(endpoint="create", status=429, fallback_suggestion="retry after 45 seconds")
    assert (await create_error(client)).retry_after == 45.0
    await sim.fault(
        endpoint="create", status=429, retry_after=3, fallback_suggestion="retry after 45 s"
    )
    assert (await create_error(client)).retry_after == 3.0
    await sim.fault(endpoint="create", status=429, retry_after="soon")
    assert (await create_error(client)).retry_after is None


def test_retry_after_parsing_edges() -> None:
    """Past dates give 0, negative or non-finite seconds are ignored, minutes are converted."""
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("1.5") == 1.5
    for unusable in ("-1", "nan", "inf", "", None, "tomorrow-ish"):
        assert parse_retry_after(unusable) is None
    assert parse_suggestion("please retry after 2 min") == 120.0
    assert parse_suggestion("contact support") is None


async def test_secrets_stay_out_of_errors_and_logs(
    sim: Sim, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the API key nor a callback URL quoted by the provider reaches errors or logs."""
    callback = "https://hooks.example.com/v1/callbacks/evolink/abc/tok-SECRET-123"
    await sim.fault(endpoint="create", status=400, message=f"callback_url {callback} is refused")
    client = client_for(http, sim.url)
    with caplog.at_level(logging.DEBUG, logger="edithook.evolink"):
        error = await create_error(client, EDIT.model_copy(update={"callback_url": callback}))
        await client.create_task(EDIT.model_copy(update={"callback_url": callback}))
    assert error.message == (
        "callback_url https://hooks.example.com/v1/callbacks/evolink/abc/[redacted] is refused"
    )
    for text in (str(error), repr(error), repr(client), caplog.text):
        assert "tok-SECRET-123" not in text
        assert API_KEY not in text
    assert caplog.records  # the calls were logged, just not their secrets


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("[" * 100_000 + "]" * 100_000, 500),
        ('{"error": {"code": ' + "9" * 5000 + ', "message": "big"}}', 400),
        ('{"error": {"code": "bad\\u0000", "message": "a\\u0000b \\ud800"}}', 400),
        ("nul \x00 in a page", 502),
    ],
    ids=["nested 100,000 deep", "a 5,000-digit code", "NUL and a lone surrogate", "a raw NUL"],
)
async def test_a_hostile_error_body_is_still_a_storable_evolink_error(
    sim: Sim, http: httpx.AsyncClient, body: str, status: int
) -> None:
    """Whatever an error body holds, the caller gets an EvoLinkError whose text Postgres takes."""
    await sim.fault(endpoint="create", status=status, body=body)
    error = await create_error(client_for(http, sim.url))
    assert error.status_code == status
    for text in (error.message, error.code or ""):
        assert "\x00" not in text
        text.encode("utf-8")  # no unpaired surrogate


async def test_the_client_works_with_the_older_envelope(
    start_sim: SimFactory, http: httpx.AsyncClient
) -> None:
    """Against integer-coded errors, codes become strings and the suggestion is honoured."""
    sim = await start_sim(error_code_style="integer")
    await sim.fault(endpoint="create", status=429, retry_after=60.0)
    error = await create_error(client_for(http, sim.url))
    assert (error.code, error.error_type, error.retry_after) == ("429", "rate_limit_error", 60.0)


def test_build_http_client_sets_timeouts_and_refuses_redirects() -> None:
    """The HTTP client has the given connect/read timeouts and does not follow redirects."""
    client = build_http_client(connect_timeout=1.5, read_timeout=12.0)
    assert (client.timeout.connect, client.timeout.read) == (1.5, 12.0)
    assert client.follow_redirects is False


def test_provider_task_parses_leniently() -> None:
    """Unknown statuses and fields parse; progress from float or string; bad numbers become None."""
    task = ProviderTask.model_validate(
        {
            "id": "task-unified-1-abcdefgh",
            "status": "queued_upstream",
            "progress": "42.7",
            "created": 1757156493.0,
            "task_info": {"can_cancel": False, "estimated_time": "30", "video_duration": 5},
            "usage": {"estimated_cost": 0.252},
            "result_data": [{"image_url": "x"}],
            "error": {"code": 500, "message": "m"},
        }
    )
    assert (task.status, task.progress, task.created) == ("queued_upstream", 42, 1757156493)
    assert task.task_info is not None
    assert task.task_info.estimated_time == 30.0
    assert task.error is not None
    assert task.error.code_str == "500"
    assert not task.is_terminal
    odd = ProviderTask.model_validate({"id": "t", "status": "failed", "progress": "lots"})
    assert (odd.progress, odd.error, odd.is_terminal) == (None, None, True)


def test_create_request_drops_unset_fields() -> None:
    """to_wire leaves out None fields so provider defaults apply; False and 0 stay."""
    request = CreateRequest(prompt="p", image_urls=["https://a/b.png"], seed=0, watermark=False)
    assert request.to_wire() == {
        "model": "qwen-image-edit-plus",
        "prompt": "p",
        "image_urls": ["https://a/b.png"],
        "seed": 0,
        "watermark": False,
    }
