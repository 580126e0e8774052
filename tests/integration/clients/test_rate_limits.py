"""`requests_per_minute`: counted in Postgres, so it holds across replicas; 429 past it with
`Retry-After`, and the IETF draft's `RateLimit-Policy` / `RateLimit` on every counted answer."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.clients.ratelimit import RateLimiter
from app.db import create_pool
from app.servers import RunningServer
from tests.conftest import Caller, Service
from tests.helpers import VALID_EDIT

DEADLINE_SECONDS = 10.0
RATE_LIMIT = re.compile(r'^"default";r=(\d+);t=(\d+)$')


async def limited_client(admin: httpx.AsyncClient, name: str, **limits: Any) -> str:
    """A new client with `limits` and a key for it: the key."""
    made = await admin.post("/v1/admin/clients", json={"name": name, **limits})
    assert made.status_code == 201, made.text
    key = (await admin.post(f"/v1/admin/clients/{name}/keys")).json()["key"]
    assert isinstance(key, str)
    return key


async def until(
    url: str, key: str, wanted: Callable[[httpx.Response], bool]
) -> httpx.Response | None:
    """Poll `GET /v1/tasks` on `url` with `key` until an answer is `wanted` (None if none was
    within the deadline: the promise is a second, a loaded machine gets slack)."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while time.monotonic() - started < DEADLINE_SECONDS:
            answer = await http.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"})
            if wanted(answer):
                return answer
            await asyncio.sleep(0.02)
    return None


async def new_window(service: Service, client: str) -> None:
    """Forget the client's window: its next request starts a new one."""
    async with service.resources.pool.connection() as conn:
        await conn.execute("DELETE FROM rate_limit_windows WHERE client = %s", (client,))


def remaining(answer: httpx.Response) -> tuple[int, int]:
    """The `RateLimit` field's remaining quota and seconds to reset."""
    found = RATE_LIMIT.match(answer.headers["ratelimit"])
    assert found, answer.headers["ratelimit"]
    return int(found[1]), int(found[2])


async def test_past_the_limit_a_request_is_429_with_retry_after_and_the_draft_fields(
    service: Service, admin: httpx.AsyncClient, client_name: str
) -> None:
    """Each counted answer says the policy and what is left; the one past it is a
    `rate-limited` problem whose `Retry-After` is the window's reset, and a create refused
    so stores nothing."""
    key = await limited_client(admin, client_name, requests_per_minute=3)
    assert await until(service.url, key, lambda a: a.status_code == 200)
    await new_window(service, client_name)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=10) as http:
        answers = [await http.get("/v1/tasks") for _ in range(3)]
        for answer, left in zip(answers, (2, 1, 0), strict=True):
            assert answer.status_code == 200
            assert answer.headers["ratelimit-policy"] == '"default";q=3;w=60'
            assert remaining(answer)[0] == left
            assert 1 <= remaining(answer)[1] <= 60
            assert "retry-after" not in answer.headers

        refused = await http.get("/v1/tasks")
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("/rate-limited")
        assert refused.headers["ratelimit-policy"] == '"default";q=3;w=60'
        left, reset = remaining(refused)
        assert left == 0
        assert refused.headers["retry-after"] == str(reset)
        assert 1 <= reset <= 60

        # A create past the limit is refused before its body is read: nothing is stored.
        create = await http.post("/v1/tasks", json=VALID_EDIT)
        assert create.status_code == 429
    async with service.resources.pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM tasks WHERE client = %s", (client_name,))
        assert await cursor.fetchone() == (0,)


async def test_two_replicas_together_accept_no_more_than_the_limit(
    service: Service, replica: RunningServer, admin: httpx.AsyncClient, client_name: str
) -> None:
    """Requests spread over two API apps on one database share one window: of 30 within it,
    exactly the limit's 10 are answered and the rest are 429."""
    key = await limited_client(admin, client_name, requests_per_minute=10)
    for url in (service.url, replica.url):
        assert await until(url, key, lambda a: a.status_code == 200), url
    await new_window(service, client_name)
    headers = {"Authorization": f"Bearer {key}"}
    gate = asyncio.Semaphore(6)
    async with (
        httpx.AsyncClient(base_url=service.url, headers=headers, timeout=10) as one,
        httpx.AsyncClient(base_url=replica.url, headers=headers, timeout=10) as two,
    ):

        async def call(http: httpx.AsyncClient) -> int:
            async with gate:
                return (await http.get("/v1/tasks")).status_code

        statuses = await asyncio.gather(*(call(one if i % 2 else two) for i in range(30)))
    assert sorted(set(statuses)) == [200, 429]
    assert statuses.count(200) == 10


async def test_a_changed_limit_applies_on_every_replica_without_a_restart(
    service: Service, replica: RunningServer, admin: httpx.AsyncClient, client_name: str
) -> None:
    """Raising the limit through the admin API shows in the next answers of both apps, and
    removing it removes the fields: an unlimited client's requests are not counted."""
    key = await limited_client(admin, client_name, requests_per_minute=2)
    for url in (service.url, replica.url):
        assert await until(url, key, lambda a: "ratelimit-policy" in a.headers), url

    changed = await admin.patch(
        f"/v1/admin/clients/{client_name}", json={"requests_per_minute": 500}
    )
    assert changed.status_code == 200
    for url in (service.url, replica.url):
        raised = await until(
            url, key, lambda a: a.headers.get("ratelimit-policy") == '"default";q=500;w=60'
        )
        assert raised is not None, url
        assert raised.status_code == 200

    removed = await admin.patch(
        f"/v1/admin/clients/{client_name}", json={"requests_per_minute": None}
    )
    assert removed.status_code == 200
    for url in (service.url, replica.url):
        free = await until(url, key, lambda a: "ratelimit-policy" not in a.headers)
        assert free is not None, url
        assert free.status_code == 200
        assert "ratelimit" not in free.headers


async def test_an_unlimited_client_is_not_counted(
    service: Service, api: httpx.AsyncClient, caller: Caller
) -> None:
    """A client without `requests_per_minute` gets no fields and no window row."""
    answer = await api.get("/v1/tasks")
    assert answer.status_code == 200
    assert "ratelimit-policy" not in answer.headers
    assert "ratelimit" not in answer.headers
    async with service.resources.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM rate_limit_windows WHERE client = %s", (caller.name,)
        )
        assert await cursor.fetchone() == (0,)


async def test_with_the_database_out_of_reach_requests_go_on_uncounted_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Counting fails open: no quota (the request proceeds, without the fields), and one
    warning for the outage rather than one per request."""
    pool = create_pool("postgresql://nobody@127.0.0.1:9/none", pool_size=1)
    await pool.open(wait=False)
    try:
        limiter = RateLimiter(pool)
        with caplog.at_level(logging.WARNING, logger="edithook.ratelimit"):
            assert await limiter.count("anyone", 5) is None
            assert await limiter.count("anyone", 5) is None
    finally:
        await pool.close()
    warnings = [r for r in caplog.records if r.name == "edithook.ratelimit"]
    assert len(warnings) == 1
    assert "unlimited" in warnings[0].getMessage()
