"""`edithook clients` and `edithook keys` as real processes, on the suite's database, with
the running service taking the keys they make and refusing those they revoke."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from tests.conftest import Caller, Service

EDITHOOK = [sys.executable, "-m", "app.cli"]


def _run(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    env["EDITHOOK_DATABASE_URL"] = database_url
    return subprocess.run(
        [*EDITHOOK, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _ok(database_url: str, *args: str) -> Any:
    result = _run(database_url, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _refused(database_url: str, *args: str) -> dict[str, Any]:
    result = _run(database_url, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    problem: dict[str, Any] = json.loads(result.stderr)
    return problem


async def _status(url: str, key: str, wanted: int) -> int:
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient(base_url=url) as http:
        while True:
            answer = await http.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"})
            if answer.status_code == wanted or time.monotonic() > deadline:
                return answer.status_code
            await asyncio.sleep(0.05)


async def test_an_operator_makes_a_client_and_key_then_disables_and_revokes(
    service: Service,
) -> None:
    db = service.settings.database_url
    name = f"cli-{uuid.uuid4().hex[:10]}"
    made = await asyncio.to_thread(
        _ok, db, "clients", "create", name, "--budget-images", "50", "--budget-period", "day"
    )
    assert (made["name"], made["status"], made["budget_images"]) == (name, "active", 50)
    assert made["budget_period"] == "day"
    shown = await asyncio.to_thread(_ok, db, "clients", "show", name)
    assert shown == made
    listed = await asyncio.to_thread(_ok, db, "clients", "list")
    assert name in [c["name"] for c in listed["items"]]

    key = await asyncio.to_thread(_ok, db, "keys", "create", name)
    assert set(key) == {"id", "key", "created_at"}
    assert await _status(service.url, key["key"], 200) == 200
    keys = await asyncio.to_thread(_ok, db, "keys", "list", name)
    assert [k["id"] for k in keys["items"]] == [key["id"]]
    assert key["key"] not in json.dumps(keys)

    changed = await asyncio.to_thread(
        _ok, db, "clients", "update", name, "--status", "disabled", "--budget-images", "none"
    )
    assert (changed["status"], changed["budget_images"]) == ("disabled", None)
    assert await _status(service.url, key["key"], 403) == 403
    await asyncio.to_thread(_ok, db, "clients", "update", name, "--status", "active")
    assert await _status(service.url, key["key"], 200) == 200

    revoked = await asyncio.to_thread(_ok, db, "keys", "revoke", name, key["id"])
    assert revoked["revoked_at"] is not None
    assert await _status(service.url, key["key"], 401) == 401


def test_refusals_are_the_apis_problems_on_stderr(service: Service, caller: Caller) -> None:
    db = service.settings.database_url
    assert _refused(db, "clients", "show", "no-such-client")["status"] == 404
    assert _refused(db, "keys", "create", "no-such-client")["status"] == 404
    assert _refused(db, "clients", "create", caller.name)["status"] == 409
    invalid = _refused(db, "clients", "create", "fine-name", "--budget-soft-ratio", "2")
    assert invalid["status"] == 422
    assert invalid["errors"][0]["field"] == "budget_soft_ratio"
    assert _refused(db, "keys", "revoke", caller.name, "not-a-key-id")["status"] == 404


def test_without_a_database_url_it_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDITHOOK_")}
    result = subprocess.run(
        [*EDITHOOK, "clients", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "EDITHOOK_DATABASE_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr
