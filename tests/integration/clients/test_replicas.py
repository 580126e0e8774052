"""A key made, revoked or its client disabled on one replica is seen by every other one,
with no restart: here two apps on one database, each with its own key cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from app.servers import RunningServer
from tests.conftest import Service

# Generous: the promise is "within a second"; a loaded machine gets slack, not a failure.
DEADLINE_SECONDS = 10.0


async def _until(url: str, key: str, wanted: Callable[[int], bool]) -> tuple[int, float]:
    """Poll `GET /v1/tasks` on `url` with `key` until the status is `wanted`; the last status
    and how long it took."""
    started = time.monotonic()
    status = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        while time.monotonic() - started < DEADLINE_SECONDS:
            answer = await http.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"})
            status = answer.status_code
            if wanted(status):
                break
            await asyncio.sleep(0.02)
    return status, time.monotonic() - started


async def test_both_replicas_see_a_new_key_a_revocation_and_a_disabled_client(
    service: Service, replica: RunningServer, admin: httpx.AsyncClient, client_name: str
) -> None:
    assert (await admin.post("/v1/admin/clients", json={"name": client_name})).status_code == 201
    first = (await admin.post(f"/v1/admin/clients/{client_name}/keys")).json()
    second = (await admin.post(f"/v1/admin/clients/{client_name}/keys")).json()
    for url in (service.url, replica.url):
        status, took = await _until(url, first["key"], lambda s: s == 200)
        assert status == 200, (url, took)

    revoked = await admin.delete(f"/v1/admin/clients/{client_name}/keys/{first['id']}")
    assert revoked.status_code == 204
    for url in (service.url, replica.url):
        status, took = await _until(url, first["key"], lambda s: s != 200)
        assert status == 401, (url, took)
        # The client's other key still works.
        status, _ = await _until(url, second["key"], lambda s: s == 200)
        assert status == 200

    disabled = await admin.patch(f"/v1/admin/clients/{client_name}", json={"status": "disabled"})
    assert disabled.status_code == 200
    for url in (service.url, replica.url):
        status, took = await _until(url, second["key"], lambda s: s != 200)
        assert status == 403, (url, took)

    enabled = await admin.patch(f"/v1/admin/clients/{client_name}", json={"status": "active"})
    assert enabled.status_code == 200
    for url in (service.url, replica.url):
        status, took = await _until(url, second["key"], lambda s: s == 200)
        assert status == 200, (url, took)
