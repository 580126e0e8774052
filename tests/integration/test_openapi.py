"""The OpenAPI document says what the service sends, and the service keeps to it."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from app.clients.keys import KeyEntry
from app.clients.seeding import seed
from tests.helpers import ADMIN_KEY, VALID_EDIT
from tests.images import encoded

if TYPE_CHECKING:
    from tests.conftest import Caller, Service

_GONE = KeyEntry(uuid.UUID(int=0), "", active=False)
PROBLEM_REFS = {"#/components/schemas/Problem", "#/components/schemas/ValidationProblem"}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]


async def test_every_documented_error_is_a_problem_document(api: httpx.AsyncClient) -> None:
    """Each 4xx/5xx answer is `application/problem+json` with the problem schema."""
    document = (await api.get("/openapi.json")).json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in _operations(document):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")) or path == "/readyz":
                continue
            content = response["content"]
            assert list(content) == ["application/problem+json"], (method, path, status)
            ref = content["application/problem+json"]["schema"]["$ref"]
            assert ref in PROBLEM_REFS, (method, path, status)
            if status == "422":
                assert ref.endswith("/ValidationProblem")


async def test_errors_are_documented_where_they_are_sent(api: httpx.AsyncClient) -> None:
    """401 and 403 wherever a key is needed, 400 and 413 with a body or a cursor, 503 with
    the database."""
    document = (await api.get("/openapi.json")).json()
    for method, path, operation in _operations(document):
        documented = set(operation["responses"])
        # A signed link needs no key; its own 403s are a bad or expired signature.
        signed_link = path.endswith("/content.{extension}")
        needs_key = (
            path.startswith(("/v1/tasks", "/v1/webhook", "/v1/admin/", "/v1/uploads"))
            and not signed_link
        )
        assert ("401" in documented) == needs_key, (method, path)
        assert ("403" in documented) == (needs_key or signed_link), (method, path)
        if "requestBody" in operation or path.startswith("/v1/callbacks"):
            assert {"400", "413"} <= documented, (method, path)
        if any(param["name"] == "cursor" for param in operation.get("parameters", [])):
            assert "400" in documented, (method, path)
        if path != "/healthz":
            assert "503" in documented, (method, path)
    create = document["paths"]["/v1/tasks"]["post"]["responses"]
    assert "409" in create
    assert "Retry-After" in create["503"]["headers"]


async def test_a_wrong_method_names_every_method_of_the_path(api: httpx.AsyncClient) -> None:
    """`Allow` on a 405 lists all the path's methods, not just those of one route."""
    wrong = await api.put("/v1/tasks")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/problem+json"
    assert wrong.headers["Allow"] == "GET, POST"
    one = await api.delete("/v1/tasks/6f1c5a34-9a0e-4b7e-8f43-2b1d1c0e9a51")
    assert one.status_code == 405
    assert one.headers["Allow"] == "GET"


async def test_listing_bounds_are_rfc_3339_date_times_with_an_offset(
    api: httpx.AsyncClient,
) -> None:
    """A number of seconds or a time without an offset is refused; the RFC 3339 forms are not."""
    for value in ("0.5", "1700000000", "2026-11-24T05:14:44", "2026-11-24", "yesterday"):
        answer = await api.get("/v1/tasks", params={"created_before": value})
        assert answer.status_code == 422, value
        assert answer.json()["errors"][0]["field"] == "query.created_before"
    created = (await api.post("/v1/tasks", json=VALID_EDIT)).json()
    for value, listed in (("2026-11-24T05:14:44Z", True), ("2999-01-01t00:00:00.5+02:00", False)):
        answer = await api.get("/v1/tasks", params={"created_after": value})
        assert answer.status_code == 200, (value, answer.text)
        ids = [item["id"] for item in answer.json()["items"]]
        assert (created["id"] in ids) is listed, value


# Thirty operations, each through every phase: longer than the suite's 120 s default
# on a busy two-core machine.
@pytest.mark.timeout(300)
async def test_a_bounded_schemathesis_run_finds_nothing(service: Service, caller: Caller) -> None:
    """Every check of schemathesis, over every phase, against the live service: no failure."""
    st = Path(sys.executable).parent / "st"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "EDITHOOK_TEST_ADMIN_KEY": ADMIN_KEY,
        "EDITHOOK_TEST_UPLOAD_IDS": ",".join(await _uploads(service, caller, 2)),
    }
    process = await asyncio.create_subprocess_exec(
        str(st),
        "--config-file",
        str(Path(__file__).parent / "schemathesis.toml"),
        "run",
        f"{service.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {caller.key}",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--seed",
        "20261202",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await process.communicate()
    finally:
        await restore_clients(service)
    assert process.returncode == 0, output.decode(errors="replace")


async def _uploads(service: Service, caller: Caller, count: int) -> list[str]:
    """Ids of `count` uploads of the caller's, for the run's `image_ids`."""
    ids = []
    async with httpx.AsyncClient(base_url=service.url, headers=caller.headers) as client:
        for _ in range(count):
            response = await client.post(
                "/v1/uploads", content=encoded(), headers={"Content-Type": "image/png"}
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    return ids


async def restore_clients(service: Service) -> None:
    """Undo what the run did to clients and keys (it may disable `alpha`, revoke its key)."""
    async with service.resources.pool.connection() as connection, connection.transaction():
        await connection.execute("DELETE FROM api_keys")
        await connection.execute("DELETE FROM clients")
        await seed(connection, service.settings.client_keys)
    keys = service.resources.api_keys
    deadline = time.monotonic() + 10
    while not all((keys.lookup(key) or _GONE).active for key in service.settings.client_keys):
        assert time.monotonic() < deadline, "the key cache did not take the restored keys"
        await asyncio.sleep(0.05)
