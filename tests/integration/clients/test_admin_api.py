"""The admin API: who may use it, what it keeps, and what a client's key then does."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from app.clients.seeding import seed
from app.db import transaction
from app.models import ApiKey
from app.servers import RunningServer
from tests.conftest import Caller, Service
from tests.helpers import VALID_EDIT

PROBLEM = "application/problem+json"


def _problem(answer: httpx.Response, status: int, slug: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["type"].endswith("/" + slug), answer.json()


async def _until_status(http: httpx.AsyncClient, key: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + 10
    while True:
        answer = await http.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"})
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-an-admin-key-0123456789-0123456789", "client", "Basic eDp5"],
)
async def test_the_admin_api_refuses_anything_but_an_admin_key(
    service: Service, caller: Caller, authorization: str | None
) -> None:
    """401 with a challenge for no key, a wrong one, or a client's key — with a body too,
    refused before it is read."""
    if authorization == "client":
        authorization = f"Bearer {caller.key}"
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=service.url, headers=headers) as http:
        for answer in (
            await http.get("/v1/admin/clients"),
            await http.post("/v1/admin/clients", json={"name": "never-made"}),
            await http.delete(f"/v1/admin/clients/{caller.name}/keys/{uuid.uuid4()}"),
        ):
            _problem(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"] == "Bearer"
    async with httpx.AsyncClient(base_url=service.url) as http:
        assert (await http.get("/v1/admin/clients/never-made")).status_code == 401


async def test_with_no_admin_key_configured_the_admin_api_is_off(
    replica: RunningServer, caller: Caller
) -> None:
    """403 `admin-disabled`, whatever key comes: none could ever be right."""
    async with httpx.AsyncClient(base_url=replica.url) as http:
        for headers in ({}, caller.headers):
            answer = await http.get("/v1/admin/clients", headers=headers)
            _problem(answer, 403, "admin-disabled")
            assert "EDITHOOK_ADMIN_KEYS" in answer.json()["detail"]
            answer = await http.post("/v1/admin/clients", headers=headers, json={"name": "x"})
            _problem(answer, 403, "admin-disabled")


async def test_a_client_and_its_keys_from_making_to_revoking(
    service: Service, admin: httpx.AsyncClient, client_name: str, caller: Caller
) -> None:
    made = await admin.post(
        "/v1/admin/clients",
        json={"name": client_name, "budget_images": 20, "requests_per_minute": 60},
    )
    assert made.status_code == 201, made.text
    client = made.json()
    assert client["status"] == "active"
    # A budget with no period given is a monthly one.
    assert (client["budget_images"], client["budget_period"]) == (20, "month")
    assert client["max_in_flight"] is None
    assert (await admin.get(f"/v1/admin/clients/{client_name}")).json() == client
    names = [c["name"] for c in (await admin.get("/v1/admin/clients")).json()["items"]]
    assert client_name in names
    assert caller.name in names

    created = await admin.post(f"/v1/admin/clients/{client_name}/keys")
    assert created.status_code == 201
    key = created.json()
    assert set(key) == {"id", "key", "created_at"}
    listed = (await admin.get(f"/v1/admin/clients/{client_name}/keys")).json()["items"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert key["key"] not in str(listed)
    assert listed[0]["last_used_at"] is None
    assert listed[0]["revoked_at"] is None

    # The key works: it creates a task that belongs to the new client.
    async with httpx.AsyncClient(base_url=service.url) as http:
        assert (await _until_status(http, key["key"], 200)).status_code == 200
        headers = {"Authorization": f"Bearer {key['key']}"}
        task = await http.post("/v1/tasks", json=VALID_EDIT, headers=headers)
        assert task.status_code == 202, task.text
        async with transaction(service.resources.sessions) as session:
            stored = await session.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.client == client_name)
            )
        assert stored == 1

        # Its use is recorded, off the request path, within a flush interval.
        deadline = time.monotonic() + 20
        while listed[0]["last_used_at"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            listed = (await admin.get(f"/v1/admin/clients/{client_name}/keys")).json()["items"]
        assert listed[0]["last_used_at"] is not None

        revoked = await admin.delete(f"/v1/admin/clients/{client_name}/keys/{key['id']}")
        assert revoked.status_code == 204
        again = await admin.delete(f"/v1/admin/clients/{client_name}/keys/{key['id']}")
        assert again.status_code == 204
        _problem(await _until_status(http, key["key"], 401), 401, "unauthorized")
        # A body is refused before it is read, as for any key that is not valid.
        _problem(
            await http.post("/v1/tasks", json=VALID_EDIT, headers=headers), 401, "unauthorized"
        )
    listed = (await admin.get(f"/v1/admin/clients/{client_name}/keys")).json()["items"]
    assert listed[0]["revoked_at"] is not None


async def test_a_disabled_clients_keys_are_403(
    service: Service, admin: httpx.AsyncClient, client_name: str
) -> None:
    await admin.post("/v1/admin/clients", json={"name": client_name})
    key = (await admin.post(f"/v1/admin/clients/{client_name}/keys")).json()["key"]
    changed = await admin.patch(
        f"/v1/admin/clients/{client_name}", json={"status": "disabled", "max_in_flight": 3}
    )
    assert changed.status_code == 200
    assert (changed.json()["status"], changed.json()["max_in_flight"]) == ("disabled", 3)
    async with httpx.AsyncClient(base_url=service.url) as http:
        answer = await _until_status(http, key, 403)
        _problem(answer, 403, "client-disabled")
        assert client_name in answer.json()["detail"]
        headers = {"Authorization": f"Bearer {key}"}
        _problem(
            await http.post("/v1/tasks", json=VALID_EDIT, headers=headers), 403, "client-disabled"
        )
    # A limit set to null is removed; what is left out stays.
    cleared = await admin.patch(f"/v1/admin/clients/{client_name}", json={"max_in_flight": None})
    assert (cleared.json()["status"], cleared.json()["max_in_flight"]) == ("disabled", None)


async def test_refusals_are_problems(
    admin: httpx.AsyncClient, client_name: str, caller: Caller
) -> None:
    assert (await admin.post("/v1/admin/clients", json={"name": client_name})).status_code == 201
    _problem(await admin.post("/v1/admin/clients", json={"name": client_name}), 409, "conflict")
    for body in (
        {"name": "has space"},
        {"name": client_name + "x", "budget_period": "week"},
        {"name": client_name + "y", "budget_soft_ratio": 1.5},
        {"name": client_name + "z", "requests_per_minute": 0},
        {"name": client_name + "w", "max_in_flight": "3"},
        {"name": client_name + "v", "unknown": 1},
    ):
        _problem(await admin.post("/v1/admin/clients", json=body), 422, "validation-error")
    _problem(
        await admin.patch(f"/v1/admin/clients/{client_name}", json={"status": None}),
        422,
        "validation-error",
    )
    _problem(await admin.get("/v1/admin/clients/no-such-client"), 404, "not-found")
    _problem(await admin.post("/v1/admin/clients/no-such-client/keys"), 404, "not-found")
    _problem(await admin.get("/v1/admin/clients/no-such-client/keys"), 404, "not-found")
    for key_id in ("not-a-uuid", str(uuid.uuid4())):
        answer = await admin.delete(f"/v1/admin/clients/{client_name}/keys/{key_id}")
        _problem(answer, 404, "not-found")
    # Another client's key is not this client's to revoke.
    other = (await admin.get(f"/v1/admin/clients/{caller.name}/keys")).json()["items"][0]["id"]
    answer = await admin.delete(f"/v1/admin/clients/{client_name}/keys/{other}")
    _problem(answer, 404, "not-found")


async def test_seeding_is_idempotent_and_keeps_a_revocation(
    service: Service, admin: httpx.AsyncClient, client_name: str
) -> None:
    """EDITHOOK_API_KEYS at every start: a key stored once, and revoked it stays revoked."""
    key = f"seeded-{uuid.uuid4().hex}"
    for _ in range(2):
        async with service.resources.pool.connection() as connection:
            await seed(connection, {key: client_name})
    listed = (await admin.get(f"/v1/admin/clients/{client_name}/keys")).json()["items"]
    assert len(listed) == 1
    async with httpx.AsyncClient(base_url=service.url) as http:
        assert (await _until_status(http, key, 200)).status_code == 200
        await admin.delete(f"/v1/admin/clients/{client_name}/keys/{listed[0]['id']}")
        assert (await _until_status(http, key, 401)).status_code == 401
        async with service.resources.pool.connection() as connection:
            await seed(connection, {key: client_name})
        listed = (await admin.get(f"/v1/admin/clients/{client_name}/keys")).json()["items"]
        assert len(listed) == 1
        assert listed[0]["revoked_at"] is not None
        assert (await _until_status(http, key, 401)).status_code == 401


async def test_concurrent_creates_of_one_name_make_one_client(
    admin: httpx.AsyncClient, client_name: str
) -> None:
    answers = await asyncio.gather(
        *(admin.post("/v1/admin/clients", json={"name": client_name}) for _ in range(10))
    )
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9
